"""The Dockerfile's image for the tests: built by `make image` with podman on a Debian base made
here, and run with buildah.

Base-image registries are out of reach on the machines the tests run on, Debian's packages are
not: the base is Debian bookworm made by debootstrap with what python:3.11-slim holds of use to
the Dockerfile (Python 3.11 with venv, CA certificates, its PATH and LANG), imported into
podman's storage. Only the build argument BASE differs from a build for a cluster. Making the
base takes about a minute, so it is kept between runs on the machine: as a tarball in CACHE_DIR
and as an image in podman's storage, both named by a key of what made them.

Podman's default OCI runtime cannot start a container on these machines (cgroups in hybrid
mode, then setrlimit refused), so builds and runs use chroot isolation, which shares the
host's network: pip downloads through it during the build, and nothing listens. `make test`
installs podman, buildah and debootstrap (`make image-tools`); without them these raise, so the
tests that need them fail rather than skip.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from trainer.common.paths import REPOSITORY

PROGRAMS = ("podman", "buildah", "debootstrap")
CACHE_DIR = pathlib.Path("/var/cache/mnist-mlp-image-tests")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The settings python:3.11-slim's configuration has and an imported tarball lacks.
BASE_CONFIG = (
    "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV=LANG=C.UTF-8",
)
BUILD_FLAGS = "--isolation=chroot --network=host"
CACHED_IMAGE = "localhost/mnist-mlp-test:cache"
# Generous: pip downloads TensorFlow and its dependencies, about 2.8 GB installed.
BUILD_SECONDS = 1800
RUN_SECONDS = 600

# An extra CA for the build's secret, beside the host's (which pip needs behind a TLS-inspecting
# proxy): a self-signed certificate made for this check, whose key was thrown away. The tests
# look for it in every layer of the image.
MARKER_CA = """\
-----BEGIN CERTIFICATE-----
MIIB5zCCAY2gAwIBAgIUZk0ivYu8Xcbyh1Xq7NeQ3C88QUEwCgYIKoZIzj0EAwIw
SDFGMEQGA1UEAww9bW5pc3QtbWxwIGltYWdlIHRlc3Q6IGFuIGV4dHJhIENBIHRo
YXQgbXVzdCBub3QgcmVhY2ggYSBsYXllcjAgFw0yNjEyMDIwMzE0NDZaGA8yMTI2
MTEwODAzMTQ0NlowSDFGMEQGA1UEAww9bW5pc3QtbWxwIGltYWdlIHRlc3Q6IGFu
IGV4dHJhIENBIHRoYXQgbXVzdCBub3QgcmVhY2ggYSBsYXllcjBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABDDG0F8S2++9vznVGz9WbyJuDjD0gGFTJgYlmCTuRZp7
z7mfU+hus43EogykHnu27s5pQMjhajgI6MM+6NchehijUzBRMB0GA1UdDgQWBBR1
maAtYpncOTULit+dwyVZujr6AjAfBgNVHSMEGDAWgBR1maAtYpncOTULit+dwyVZ
ujr6AjAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCID9sXmFMpJGT
58D2hX2cKejXqBTNaUCYhiCNPFevUIQXAiEA4r2KArnczNWph8vX14RIzDJHBgK5
cNu5vIpZSoT1H9E=
-----END CERTIFICATE-----
"""
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def check_programs() -> None:
    missing = [program for program in PROGRAMS if shutil.which(program) is None]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not installed: `make image-tools` installs them")


def _run(*command: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=True, **kwargs
    )


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], timeout=60).returncode == 0


def base_image() -> str:
    """The Debian base's name in podman's storage: made by debootstrap on a machine's first call
    (about a minute), imported from the cached tarball if podman's storage lost it, else at once.
    """
    check_programs()
    made_by = json.dumps([SUITE, "minbase", MIRROR, PACKAGES, BASE_CONFIG])
    key = hashlib.sha256(made_by.encode()).hexdigest()[:16]
    name = f"localhost/mnist-mlp-test-base:{SUITE}-{key}"
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # One maker at a time: two test sessions on one machine wait for the first one's base.
    with open(CACHE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image_exists(name):
            return name
        tarball = CACHE_DIR / f"base-{SUITE}-{key}.tar"
        if not tarball.exists():
            with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
                rootfs = os.path.join(work, "rootfs")
                _run(
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    rootfs,
                    MIRROR,
                    timeout=1200,
                )
                partial = os.path.join(work, "base.tar")
                _run("tar", "-C", rootfs, "--numeric-owner", "-cf", partial, ".", timeout=600)
                os.replace(partial, tarball)
        changes = [f"--change={change}" for change in BASE_CONFIG]
        _run("podman", "import", *changes, str(tarball), name, timeout=600)
    return name


@dataclasses.dataclass(frozen=True)
class Build:
    image: str
    commit: str  # What `make image` gave the build as GIT_COMMIT.
    output: str  # make's output: its own lines and the build's.


def make_image(image: str, base: str, directory: pathlib.Path = REPOSITORY) -> Build:
    """`make image` in `directory` with podman on `base`, the host's CA and MARKER_CA given as the
    secret."""
    with tempfile.TemporaryDirectory() as work:
        ca = pathlib.Path(work, "ca.pem")
        ca.write_text(pathlib.Path(HOST_CA).read_text() + MARKER_CA)
        built = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-C",
                str(directory),
                "image",
                f"IMAGE={image}",
                f"BASE={base}",
                f"CA_CERT={ca}",
                "CONTAINER_TOOL=podman",
                f"IMAGE_BUILD_FLAGS={BUILD_FLAGS}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_SECONDS,
        )
    assert built.returncode == 0, built.stdout[-5000:]
    commit = re.search(r"^make image: podman builds \S+ from commit (\S+)$", built.stdout, re.M)
    assert commit, built.stdout[-5000:]
    return Build(image, commit.group(1), built.stdout)


def config(image: str) -> dict:
    """The image's configuration: Entrypoint, WorkingDir, Env, User."""
    return json.loads(_run("podman", "image", "inspect", "--format={{json .Config}}", image).stdout)


def layers(image: str) -> list[str]:
    """The directories of the image's layers in podman's storage (overlay), top first."""
    data = json.loads(
        _run("podman", "image", "inspect", "--format={{json .GraphDriver}}", image).stdout
    )
    assert data["Name"] == "overlay", data
    return [data["Data"]["UpperDir"], *data["Data"].get("LowerDir", "").split(":")]


def layer_ids(image: str) -> list[str]:
    """The image's layers by digest, base first."""
    return json.loads(
        _run("podman", "image", "inspect", "--format={{json .RootFS.Layers}}", image).stdout
    )


@contextlib.contextmanager
def container(image: str):
    """A buildah working container of the image, removed on leaving."""
    name = _run("buildah", "from", "--pull=never", image).stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True, timeout=120)


def run(
    image: str,
    command: list[str],
    volumes: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`command` in a container of the image, as its user, in its working directory and with its
    environment; `volumes` maps host directories to where they are mounted. Output is kept."""
    with container(image) as name:
        return subprocess.run(
            [
                "buildah",
                "run",
                "--isolation=chroot",
                *(f"--volume={host}:{inside}" for host, inside in (volumes or {}).items()),
                *(f"--env={key}={value}" for key, value in (env or {}).items()),
                name,
                "--",
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
        )


def remove_image(image: str) -> None:
    subprocess.run(["podman", "rmi", "--force", image], capture_output=True, timeout=300)


def keep_as_cache(image: str) -> None:
    """Renames a built image to CACHED_IMAGE. Removing it would remove the build's cache too
    (its intermediate images); under one name the next session's build starts from its layers.
    The image the name held before is removed, with what only it used, unless another name
    or a container still holds it (then podman refuses, and it stays)."""
    before = image_id(CACHED_IMAGE)
    _run("podman", "tag", image, CACHED_IMAGE)
    _run("podman", "untag", image, image)  # Without a second name: every name.
    if before and before != image_id(CACHED_IMAGE):
        subprocess.run(["podman", "rmi", before], capture_output=True, timeout=300)


def image_id(name: str) -> str | None:
    if not image_exists(name):
        return None
    return _run("podman", "image", "inspect", "--format={{.Id}}", name).stdout.strip()
