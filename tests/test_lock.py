"""Each requirements*.txt and the lock `make lock` wrote from it agree.

requirements*.txt name the direct dependencies, each pinned exactly; the lock of each
(requirements.lock, requirements-and-cuda.lock, requirements-dev.lock) adds every indirect one,
pinned, with its files' hashes, and `make venv` and the image install from the locks alone. A pin
changed, added or removed without `make lock` fails here. Files only: part of `make test-fast`.
"""

import dataclasses
import re

import pytest

from trainer.common.paths import REPOSITORY

REQUIREMENTS = sorted(REPOSITORY.glob("requirements*.txt"))
RUNTIME = REPOSITORY / "requirements.txt"
DEV = REPOSITORY / "requirements-dev.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)$")
LOCKED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
VIA_SOURCE = re.compile(r"^#\s+(?:via\s+)?(-r \S+)$")


def normalized(name: str) -> str:
    """A package's name as PyPI compares names (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_of(requirements):
    return requirements.with_suffix(".lock")


def direct_pins(requirements, own_only=False) -> dict[str, str]:
    """name -> version of every line of `requirements` and the files it includes with `-r`."""
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            if not own_only:
                pins.update(direct_pins(requirements.parent / line[3:].strip()))
            continue
        pin = PIN.match(line)
        assert pin, f"{requirements.name}: {line!r} is not pinned exactly (name==version)"
        pins[normalized(pin[1])] = pin[2]
    return pins


@dataclasses.dataclass
class Locked:
    versions: set[str] = dataclasses.field(default_factory=set)
    hashes: int = 0
    sources: set[str] = dataclasses.field(default_factory=set)  # The `-r FILE` that named it.


def read_lock(lock) -> dict[str, Locked]:
    """name -> what the lock holds of it: uv's `name==version [; marker] \\`, its `--hash=`
    lines and its `# via` annotations."""
    packages: dict[str, Locked] = {}
    current = None
    for line in lock.read_text().splitlines():
        stripped = line.strip()
        if locked := LOCKED.match(line):
            current = packages.setdefault(normalized(locked[1]), Locked())
            current.versions.add(locked[2])
        elif current and stripped.startswith("--hash=sha256:"):
            current.hashes += 1
        elif current and (source := VIA_SOURCE.match(stripped)):
            current.sources.add(source[1])
    return packages


def test_each_requirements_file_has_its_lock():
    assert RUNTIME in REQUIREMENTS and DEV in REQUIREMENTS
    for requirements in REQUIREMENTS:
        assert lock_of(requirements).is_file(), f"{requirements.name}: no lock; run `make lock`"


@pytest.mark.parametrize("requirements", REQUIREMENTS, ids=lambda path: path.name)
def test_the_lock_holds_each_direct_pin_at_its_version(requirements):
    lock = read_lock(lock_of(requirements))
    pins = direct_pins(requirements)
    missing = sorted(f"{name}=={version}" for name, version in pins.items() if name not in lock)
    assert not missing, f"not in {lock_of(requirements).name}: run `make lock`"
    other = {
        f"{name}=={version}": sorted(lock[name].versions)
        for name, version in pins.items()
        if lock[name].versions != {version}
    }
    assert not other, f"{lock_of(requirements).name} holds other versions: run `make lock`"


@pytest.mark.parametrize("requirements", REQUIREMENTS, ids=lambda path: path.name)
def test_what_the_lock_holds_as_direct_is_still_required(requirements):
    """A pin removed from a requirements file leaves the lock naming it as direct (uv's
    `# via -r FILE`) until `make lock`."""
    named_direct = {name for name, held in read_lock(lock_of(requirements)).items() if held.sources}
    no_longer_required = sorted(named_direct - direct_pins(requirements).keys())
    assert not no_longer_required, f"still in {lock_of(requirements).name}: run `make lock`"


@pytest.mark.parametrize("requirements", REQUIREMENTS, ids=lambda path: path.name)
def test_every_locked_package_has_hashes_and_one_version(requirements):
    """pip's --require-hashes refuses a package without them; one version, as the locks are
    resolved for Python 3.11 alone (uv's --fork-strategy fewest)."""
    lock = read_lock(lock_of(requirements))
    assert lock
    assert not [name for name, held in lock.items() if held.hashes == 0]
    assert not {name: held.versions for name, held in lock.items() if len(held.versions) != 1}
    assert lock_of(requirements).read_text().splitlines()[1].strip() == "#    make lock"


def test_the_locks_agree_on_the_packages_they_share():
    """The extras' and the tools' locks are resolved within requirements.lock: the tests run
    the versions the image holds."""
    runtime = read_lock(lock_of(RUNTIME))
    for requirements in REQUIREMENTS:
        lock = read_lock(lock_of(requirements))
        assert runtime.keys() <= lock.keys(), requirements.name
        differ = {name for name in runtime if lock[name].versions != runtime[name].versions}
        assert not differ, f"{lock_of(requirements).name} and requirements.lock: {differ}"


@pytest.mark.parametrize(
    "requirements", [path for path in REQUIREMENTS if path != DEV], ids=lambda path: path.name
)
def test_the_image_s_locks_hold_no_test_or_lint_tool(requirements):
    tools = direct_pins(DEV, own_only=True).keys() - direct_pins(RUNTIME).keys()
    assert {"pytest", "ruff", "jsonschema", "kubernetes-validate", "uv"} <= tools
    assert not tools & read_lock(lock_of(requirements)).keys()
