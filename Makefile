# Two commands from a fresh clone: `make train` and `make test`. Both create .venv first.
# While editing: `make test-fast` (no process, cluster or server: minutes), `make format`.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Extra flags for the trainer, e.g. make train ARGS="--epochs=2 --cpu_replicas=2"
ARGS ?=

.PHONY: train test test-fast lint format bench convergence chaos venv clean-venv slurm

venv: $(VENV)/.installed

# Rebuilt whenever requirements.txt changes.
$(VENV)/.installed: requirements.txt
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	touch $@

train: venv
	$(PYTHON) -m trainer.train $(ARGS)

# The whole suite, as CI runs it, after the linter.
test: venv slurm lint
	$(PYTHON) -m pytest -q tests

# The tests not marked slow, for the edit-test loop: they start no process, cluster or server
# (tests/conftest.py fails one that does without the mark) and train for seconds at most.
test-fast: venv
	$(PYTHON) -m pytest -q -m "not slow" tests

# ruff's settings are in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# tests/test_slurm.py runs a real one-node Slurm cluster: Debian's slurm-wlm and munge, installed
# here when missing (CI runs as root on a fresh machine; elsewhere through sudo).
SLURM_PROGRAMS := sbatch srun scontrol slurmctld slurmd munged
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
slurm:
	@for p in $(SLURM_PROGRAMS); do command -v $$p >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge; \
	fi

convergence: venv
	$(PYTHON) -m trainer.convergence $(ARGS)

bench: venv
	$(PYTHON) -m trainer.bench $(ARGS)

# Runs killed again and again end bitwise as an uninterrupted run (minutes; not in make test).
chaos: venv
	$(PYTHON) -m tests.chaos $(ARGS)

clean-venv:
	rm -rf $(VENV)
