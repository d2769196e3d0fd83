"""The small files that make a run reproducible and its outcome readable without TensorBoard.

flags.txt    the run's flags as an absl flagfile, headed by the git commit it ran at:
             `python -m trainer.train --flagfile=<run>/flags.txt` reruns it.
data.json    the data the run started on: its source and fingerprint (trainer/run/training_data.py).
result.json  written last, when the run has finished: its final scores. Sweeps read it to skip
             finished runs and to compare them.

Each is written whole or not at all: into `<name>.tmp`, renamed into place once complete, and
removed if the disk fills first, or another fault of the filesystem stops the write
(trainer/run/disk.py).
"""

import dataclasses
import json
import os
import subprocess

from trainer.common.paths import REPOSITORY
from trainer.run import disk

FLAGS_FILE = "flags.txt"
DATA_FILE = "data.json"
RESULT_FILE = "result.json"


# Where the commit is found without a repository: the image sets it from its build argument
# (Dockerfile), since the image holds the code but not .git.
GIT_COMMIT_VARIABLE = "TRAINER_GIT_COMMIT"


def git_commit() -> str:
    """HEAD of the code's repository, marked `-dirty` with uncommitted changes; without one (in
    the image), $TRAINER_GIT_COMMIT; else `unknown`."""

    def git(*args):
        return subprocess.run(
            ["git", "-C", REPOSITORY, *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get(GIT_COMMIT_VARIABLE) or "unknown"


def write_flags(run_dir: str, flagfile: str) -> str:
    """Writes flags.txt, unless the run has one: a resumption keeps the first run's."""
    path = os.path.join(run_dir, FLAGS_FILE)
    if os.path.exists(path):
        return path
    return _write_whole(
        path,
        f"# git commit {git_commit()}\n"
        f"# rerun: python -m trainer.train --flagfile={path}\n{flagfile}",
    )


def read_flags(run_dir: str) -> str | None:
    """The text of the run's flags.txt, or None for a run that has not started."""
    try:
        with open(os.path.join(run_dir, FLAGS_FILE)) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_result(run_dir: str, result) -> str:
    """Writes a dataclass result as JSON."""
    return _write_json(
        os.path.join(run_dir, RESULT_FILE),
        {**dataclasses.asdict(result), "git_commit": git_commit()},
    )


def read_result(run_dir: str) -> dict | None:
    """The finished run's result.json, or None while it has not finished."""
    return _read_json(os.path.join(run_dir, RESULT_FILE))


def write_data(run_dir: str, record: dict) -> str:
    """Writes data.json, unless the run has one: a resumption keeps the first run's."""
    path = os.path.join(run_dir, DATA_FILE)
    return path if os.path.exists(path) else _write_json(path, record)


def read_data(run_dir: str) -> dict | None:
    """The run's data.json, or None for a run that has not started."""
    return _read_json(os.path.join(run_dir, DATA_FILE))


def _write_json(path: str, content: dict) -> str:
    return _write_whole(path, json.dumps(content, indent=2))


def _write_whole(path: str, text: str) -> str:
    """Atomically: a reader never sees half a file, nor does a rerun after a full disk."""
    partial = path + ".tmp"
    with disk.writing(
        os.path.dirname(path),
        f"writing {os.path.basename(path)}",
        undo=lambda: disk.remove(partial),
    ):
        with open(partial, "w") as f:
            f.write(text)
        os.replace(partial, path)
    return path


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a --logdir that is a file.
        return None
