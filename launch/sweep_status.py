"""Where each run of a sweep stands, read from the shared filesystem whichever engine runs it.

A run is finished once its result.json is there; running while its trainer holds the run's
lock (trainer/run/lock.py: the kernel drops it when the trainer ends, however it ends); failed
when the last attempt in its train.log ended in the trainer's one-line error; else pending:
not started yet, or stopped (preempted, requeued, waiting for its engine) at its newest
checkpoint's step, which is where it resumes.
"""

import fcntl
import os
import re

from launch.sweep_plan import Sweep, SweepRun
from launch.sweep_report import ATTEMPT_HEADER, FAILED, FINISHED, LOG_FILE, RunReport, reason
from trainer.recipe import CHECKPOINT_DIR
from trainer.run import files
from trainer.run.lock import LOCK_FILE

RUNNING, PENDING = "running", "pending"
_ERROR_LINES = ("trainer.train: error: ", "FATAL Flags parsing error: ")


def run_status(sweep: Sweep, run: SweepRun) -> RunReport:
    run_dir = sweep.run_dir(run)
    result = files.read_result(run_dir)
    if result is not None:
        return RunReport(run, FINISHED, result["test_accuracy"])
    step = newest_checkpoint_step(run_dir)
    at = "no checkpoint yet" if step is None else f"at step {step}"
    if is_running(run_dir):
        return RunReport(run, RUNNING, message=at)
    lines = last_attempt(run_dir)
    if lines is None:
        return RunReport(run, PENDING, message="not started")
    last = reason(lines)
    if last.startswith(_ERROR_LINES):
        return RunReport(run, FAILED, message=last, exit_code=1)
    return RunReport(run, PENDING, message=f"stopped {at}: {last}")


def sweep_status(sweep: Sweep) -> list[RunReport]:
    return [run_status(sweep, run) for run in sweep.runs]


def is_running(run_dir: str) -> bool:
    """Whether a trainer holds the run's lock now."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK_FILE), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # Releases what it took.
    return False


def newest_checkpoint_step(run_dir: str) -> int | None:
    """The step of the checkpoint a resumption starts from, as CheckpointManager lists it."""
    try:
        with open(os.path.join(run_dir, CHECKPOINT_DIR, "checkpoint")) as f:
            state = f.read()
    except FileNotFoundError:
        return None
    match = re.search(r'^model_checkpoint_path: ".*?ckpt-(\d+)"', state, re.MULTILINE)
    return int(match.group(1)) if match else None


def last_attempt(run_dir: str) -> list[str] | None:
    """The non-empty lines of the last attempt in the run's train.log; None before any."""
    try:
        with open(os.path.join(run_dir, LOG_FILE)) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    attempts = ATTEMPT_HEADER.split(text)
    if len(attempts) < 2:
        return None
    return [line.strip() for line in attempts[-1].splitlines() if line.strip()]


def unfinished(sweep: Sweep) -> list[int]:
    """The plan's indices of the runs neither finished nor running: what a resubmission runs."""
    return [
        index
        for index, report in enumerate(sweep_status(sweep))
        if report.status not in (FINISHED, RUNNING)
    ]
