# The image launch.kubernetes's manifests run: this repository as the working directory, its
# requirements installed. `make image` builds it; docs/clusters.md#kubernetes shows build, push
# and the manifests together. tests/test_image.py builds this very file (on a Debian base made
# by debootstrap: only BASE differs) and trains inside the image.
#
#   make image IMAGE=registry.example.com/mlp:latest
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t mlp .
#
# Build arguments:
#   BASE               Debian bookworm with Python 3.11, what the requirements are locked for.
#   TENSORFLOW_EXTRA   and-cuda: a GPU image, from requirements-and-cuda.lock. TensorFlow's CUDA
#                      extra installs CUDA and cuDNN as wheels; the node's NVIDIA driver, mounted
#                      by the NVIDIA container toolkit, does the rest, so the default base
#                      serves. An NVIDIA base (nvidia/cuda:*) also works as BASE if it has
#                      Python 3.11 with venv.
#   GIT_COMMIT         the commit the code is from: a run's flags.txt names it (no .git here).
# Secret:
#   ca                 an extra CA certificate for pip, behind a TLS-inspecting proxy
#                      (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`); mounted for
#                      the install step only, never in a layer.
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The trainer runs as this user: the code is root's and read-only to it; it writes to --logdir.
RUN useradd --create-home --uid 1000 --user-group trainer

WORKDIR /app

# The requirements in a layer of their own, before the code: a change of code rebuilds in seconds.
# The program's lock only (`make lock` writes it from requirements.txt): every package at its
# locked version, each file checked against its hash, no test or lint tool.
COPY requirements.lock requirements-and-cuda.lock ./
ARG TENSORFLOW_EXTRA=
RUN --mount=type=secret,id=ca \
    set -eu; \
    lock="requirements${TENSORFLOW_EXTRA:+-$TENSORFLOW_EXTRA}.lock"; \
    if [ ! -f "$lock" ]; then \
        echo "TENSORFLOW_EXTRA=$TENSORFLOW_EXTRA: no $lock (the locked extras: and-cuda)" >&2; \
        exit 1; \
    fi; \
    if [ -s /run/secrets/ca ]; then \
        cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca > /tmp/pip-ca.pem 2>/dev/null \
            || cp /run/secrets/ca /tmp/pip-ca.pem; \
        export PIP_CERT=/tmp/pip-ca.pem; \
    fi; \
    python3 -m venv "$VIRTUAL_ENV"; \
    pip install --no-cache-dir --disable-pip-version-check --require-hashes -r "$lock"; \
    rm -f /tmp/pip-ca.pem

COPY . .
# runs/: the default --logdir, the one place here the trainer may write (the manifests mount
# their volume at /mnt/runs instead).
RUN mkdir -p runs && chown trainer:trainer runs

ARG GIT_COMMIT=unknown
ENV TRAINER_GIT_COMMIT=${GIT_COMMIT}
USER trainer
# The manifests replace this command with their own `python -m trainer.train ...` (both engines),
# run in this working directory; `docker run IMAGE --epochs=1` trains here.
ENTRYPOINT ["python", "-m", "trainer.train"]
