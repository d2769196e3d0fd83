# Two commands from a fresh clone: `make train` and `make test`. Both create .venv first.
# While editing: `make test-fast` (no process, cluster or server: minutes), `make format`.
PYTHON_BOOTSTRAP ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# Extra flags for the trainer, e.g. make train ARGS="--epochs=2 --cpu_replicas=2"
ARGS ?=

.PHONY: train test test-fast lint format bench convergence chaos venv lock clean-venv slurm \
	image image-tools docs

venv: $(VENV)/.installed

# Installed from requirements-dev.lock (the program's requirements and the test and lint tools,
# each indirect one too, at the versions `make lock` wrote, every file checked against its hash);
# rebuilt whenever that lock changes.
$(VENV)/.installed: requirements-dev.lock
	test -x $(PYTHON) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

# The locks, one per requirements file: every package it brings in, pinned, with the hashes of
# all its files, for Python 3.11 on any platform (uv's universal resolution: Linux x86_64 and
# arm64, macOS). requirements.lock is the image's; requirements-and-cuda.lock adds the CUDA wheels
# (make image TENSORFLOW_EXTRA=and-cuda); requirements-dev.lock the test and lint tools (make
# venv). Those two are resolved within requirements.lock, so the three agree on what they share,
# and tests/test_lock.py checks the locks hold the requirements. Run after a change of a
# requirements file; what is already locked stays unless LOCK_FLAGS=--upgrade (all to their
# newest) or LOCK_FLAGS="--upgrade-package NAME".
LOCK_FLAGS ?=
LOCK := $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 \
	--fork-strategy fewest --generate-hashes --custom-compile-command "make lock" $(LOCK_FLAGS)
lock: venv
	$(LOCK) requirements.txt -o requirements.lock
	$(LOCK) requirements-and-cuda.txt -c requirements.lock -o requirements-and-cuda.lock
	$(LOCK) requirements-dev.txt -c requirements.lock -o requirements-dev.lock

train: venv
	$(PYTHON) -m trainer.train $(ARGS)

# pytest-xdist's workers for make test and test-fast: a test file's tests stay in one worker (--dist loadfile),
# so a module's shared runs are made once. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2

# The whole suite, as CI runs it, after the linter.
test: venv slurm image-tools lint
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# The tests not marked slow, for the edit-test loop: they start no process, cluster or server
# (tests/conftest.py fails one that does without the mark) and train for seconds at most.
test-fast: venv
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" tests

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

# tests/test_image.py builds the Dockerfile with podman on a Debian base made by debootstrap and
# runs the image with buildah: installed here when missing, as for Slurm.
IMAGE_TEST_PROGRAMS := podman buildah debootstrap
image-tools:
	@for p in $(IMAGE_TEST_PROGRAMS); do command -v $$p >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y $(IMAGE_TEST_PROGRAMS); \
	fi

# The image launch.kubernetes's manifests run (Dockerfile, docs/clusters.md#kubernetes), built by
# docker when its daemon answers, else by podman: make image IMAGE=registry.example.com/mlp:v1
IMAGE ?= mnist-mlp:latest
# Build arguments; empty leaves the Dockerfile's: BASE=python:3.11-slim, no TENSORFLOW_EXTRA
# (and-cuda: a GPU image).
BASE ?=
TENSORFLOW_EXTRA ?=
# Behind a TLS-inspecting proxy: the CA pip must trust (CA_CERT=/etc/ssl/certs/ca-certificates.crt),
# given to the build as a secret, so that it is in no layer of the image.
CA_CERT ?=
# The tool, instead of the one found; more flags for its build (IMAGE_BUILD_FLAGS=--pull).
CONTAINER_TOOL ?=
IMAGE_BUILD_FLAGS ?=
comma := ,
image:
	@tool="$(CONTAINER_TOOL)"; \
	if [ -z "$$tool" ]; then \
		if command -v docker >/dev/null && docker info >/dev/null 2>&1; then tool=docker; \
		elif command -v podman >/dev/null; then tool=podman; \
		elif command -v docker >/dev/null; then \
			echo "make image: docker's daemon does not answer (docker info), and podman is not installed" >&2; \
			exit 1; \
		else echo "make image: neither docker nor podman is installed" >&2; exit 1; fi; \
	fi; \
	commit="$$(git rev-parse HEAD 2>/dev/null)" && \
		{ [ -z "$$(git status --porcelain --untracked-files=no)" ] || commit="$$commit-dirty"; } || \
		commit=unknown; \
	echo "make image: $$tool builds $(IMAGE) from commit $$commit"; \
	$$tool build --build-arg GIT_COMMIT="$$commit" $(if $(BASE),--build-arg BASE=$(BASE)) \
		$(if $(TENSORFLOW_EXTRA),--build-arg TENSORFLOW_EXTRA=$(TENSORFLOW_EXTRA)) \
		$(if $(CA_CERT),--secret id=ca$(comma)src=$(CA_CERT)) $(IMAGE_BUILD_FLAGS) -t $(IMAGE) . && \
	echo "make image: built $(IMAGE), $$(( $$($$tool image inspect --format '{{.Size}}' $(IMAGE)) / 1000000 )) MB"

convergence: venv
	$(PYTHON) -m trainer.convergence $(ARGS)

bench: venv
	$(PYTHON) -m trainer.bench $(ARGS)

# Runs killed again and again end bitwise as an uninterrupted run (minutes; not in make test).
chaos: venv
	$(PYTHON) -m tests.chaos $(ARGS)

# The program output docs/training.md shows, written by running the program (tests/test_docs.py
# checks the page still shows what it prints): after a change of what a run logs.
docs: venv
	$(PYTHON) -m tools.doc_transcripts

clean-venv:
	rm -rf $(VENV)
