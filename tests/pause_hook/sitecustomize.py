"""Holds a trainer process right after it saves a chosen checkpoint, or as its run starts, for
tests that must act at a known moment (tests/toolkit.py: `Pause`).

Python imports `sitecustomize` at start-up from the first directory on its path that has one;
`Pause.env()` puts this directory first and names the moment in TRAINER_TEST_PAUSE, which every
process started with that environment inherits, workers started by a launcher included. Nothing
else is changed: the process is the real entry point, holding still inside its save.
"""

import importlib.abc
import importlib.util
import json
import os
import pathlib
import signal
import sys
import time

SETTINGS = os.environ.get("TRAINER_TEST_PAUSE")


def _task_index() -> int:
    """This worker's index: in TF_CONFIG, or as a Slurm task (the trainer's order too); 0 for a
    process of its own."""
    if os.environ.get("TF_CONFIG"):
        return json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    return int(os.environ.get("SLURM_PROCID", 0))


def _hold(directory: pathlib.Path, step: int) -> None:
    """Says it is held (the file `paused`), then waits until the test creates `release`.

    A stop signal that reaches the process while held is noted in the file `signalled` (after
    the trainer's own handler has taken it), so that a test whose signal goes through a
    launcher can release the trainer only once the signal has arrived."""
    noted = {}

    def note_then_handle(signum, frame):
        noted[signum](signum, frame)
        (directory / "signalled").write_text(f"{signum}\n")

    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if callable(handler):
            noted[signum] = handler
            signal.signal(signum, note_then_handle)
    (directory / "paused.tmp").write_text(f"{os.getpid()} {step}\n")
    (directory / "paused.tmp").rename(directory / "paused")
    try:
        while not (directory / "release").exists():
            time.sleep(0.05)  # Signal handlers run between these sleeps, as at any step boundary.
    finally:
        for signum, handler in noted.items():
            if signal.getsignal(signum) is note_then_handle:  # Unless the trainer replaced it.
                signal.signal(signum, handler)


def _patch(module) -> None:
    """Holds this worker once: after its save of the step named, or, with no step, as the run
    starts (before it restores its checkpoint and trains)."""
    settings = json.loads(SETTINGS)
    if _task_index() != settings["task"]:
        return
    directory, step = pathlib.Path(settings["directory"]), settings["step"]
    held = []

    def hold_once(at: int) -> None:
        if not held:
            held.append(at)
            _hold(directory, at)

    if step is None:
        restore = module.RunCheckpoints.restore

        def hold_then_restore(self):
            hold_once(0)
            return restore(self)

        module.RunCheckpoints.restore = hold_then_restore
    else:
        save = module.RunCheckpoints.save

        def save_then_hold(self, at: int) -> str:
            path = save(self, at)
            if at == step:
                hold_once(at)
            return path

        module.RunCheckpoints.save = save_then_hold


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches trainer.run.checkpoints once it is imported, so TensorFlow loads when it would."""

    def find_spec(self, name, path, target=None):
        if name != "trainer.run.checkpoints":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if SETTINGS:
    sys.meta_path.insert(0, _PatchOnImport())
