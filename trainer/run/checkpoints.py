"""Restoring a run's state: the newest checkpoint that reads back, and clear words otherwise.

Saving needs little of ours: `tf.train.CheckpointManager` writes the checkpoint files first
and only then rewrites its small state file, atomically, so a job killed mid-save still lists
the previous checkpoint as the latest. What the killed save wrote is never listed, so never read
nor deleted by TensorFlow: its shards in `ckpt-<step>_temp/` (each save writes there, then merges
them into `ckpt-<step>.*`), or the state file's `checkpoint.tmp<uuid>`; the chief removes them as
the next run starts. A save that meets a full disk is ours to clean up too: it leaves
`ckpt-<step>_temp/`, maybe part of `ckpt-<step>.*` and a `checkpoint.tmp*`, none listed.
"""

import os
import re
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from trainer.common.errors import OneLineError
from trainer.run import disk

CHECKPOINT_NAME = "ckpt"  # Files are <directory>/ckpt-<step>.*
# What a save killed midway leaves in the chief's directory: the shards not merged yet
# (ckpt-<step>_temp/part-*), the state file not renamed into place yet.
_KILLED_SAVE = re.compile(rf"{CHECKPOINT_NAME}-\d+_temp|checkpoint\.tmp[0-9a-f]{{32}}")


class CheckpointError(OneLineError):
    """No usable checkpoint where one is expected; the message names the file."""


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores `path`; OpError or IndexError if it is unreadable (truncated, corrupted),
    CheckpointError if a model of another shape wrote it."""
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except AssertionError as e:
        raise CheckpointError(
            f"{path}: lacks some of what this trainer checkpoints ({_first_line(e)}); written "
            "by an older version? Train into another --logdir or --run_name"
        ) from None
    except ValueError as e:
        # The wording differs between plain and mirrored variables.
        if "incompatible tensor with shape" in str(e) or "Shape mismatch" in str(e):
            raise CheckpointError(
                f"{path}: written by a model of another shape ({_first_line(e)}); "
                "train into another --logdir or --run_name"
            ) from None
        raise


def restore_latest(
    checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager
) -> str | None:
    """Restores the newest readable checkpoint the manager lists and returns its path.

    A truncated or corrupted checkpoint is skipped for the one before it, with a warning; one
    written by a model of another shape is an error (every older one has that shape too).
    Returns None when there is no checkpoint yet.
    """
    for path in reversed(manager.checkpoints):
        try:
            restore(checkpoint, path)
        except (tf.errors.OpError, IndexError) as e:
            logging.warning(
                "%s is unreadable (%s); trying the checkpoint before it", path, _first_line(e)
            )
            continue
        return path
    if manager.checkpoints:
        raise CheckpointError(
            f"{manager.directory}: none of the checkpoints "
            f"{', '.join(manager.checkpoints)} can be read"
        )
    return None


def _step_of(path: str | None) -> int:
    return int(path.rsplit("-", 1)[1]) if path else 0


def _remove_killed_saves(directory: str) -> None:
    """Removes what saves killed midway left in `directory`, in one line. Only the chief, holding
    the run's lock, calls it: no save of this run is under way."""
    if not tf.io.gfile.isdir(directory):
        return
    left = sorted(entry.rstrip("/") for entry in tf.io.gfile.listdir(directory))
    left = [entry for entry in left if _KILLED_SAVE.fullmatch(entry)]
    for entry in left:
        disk.remove(os.path.join(directory, entry))
    if left:
        logging.info(
            "removed %s from %s: left by a save that was killed midway, never listed",
            ", ".join(left),
            directory,
        )


class RunCheckpoints:
    """A run's checkpoints, written the way TensorFlow's multi-worker guide asks.

    Every worker takes part in a save (the variables are read collectively), but only the
    chief's lands in the run's checkpoint directory; the others write to a private directory
    and delete it straight after. Every worker restores the checkpoint the chief picks (its
    newest readable one): another worker's own listing of the chief's directory may be stale
    (a CheckpointManager lists it once, when created) or, on storage that is not shared, empty.

    `chief_value(value)` returns the chief's `value` on every worker: a collective that every
    worker calls at the same point (distribute.chief_value); in one process, the identity.
    """

    def __init__(
        self,
        checkpoint: tf.train.Checkpoint,
        directory: str,
        max_to_keep: int,
        is_chief: bool = True,
        task: str = "worker 0",
        chief_value: Callable[[int], int] = lambda value: value,
    ):
        self.checkpoint, self.directory = checkpoint, directory
        self.is_chief, self.task, self._chief_value = is_chief, task, chief_value
        write_directory = (
            directory if is_chief else os.path.join(directory, "." + task.replace(" ", "-"))
        )
        if is_chief:
            _remove_killed_saves(directory)
        elif tf.io.gfile.exists(write_directory):
            # Left by a save that was killed before its cleanup; never read back.
            tf.io.gfile.rmtree(write_directory)
        self.manager = tf.train.CheckpointManager(
            checkpoint,
            write_directory,
            max_to_keep if is_chief else 1,
            checkpoint_name=CHECKPOINT_NAME,
        )
        self._saved = None  # (step, path) of this process's last save.
        disk.note_checkpoints(directory)

    def restore(self) -> str | None:
        """Restores, on every worker, the chief's newest readable checkpoint; returns its path,
        or None when there is none. A collective when there are several workers."""
        try:
            path = restore_latest(self.checkpoint, self.manager) if self.is_chief else None
        except CheckpointError:
            self._chief_value(-1)  # The others stop too, rather than wait for the chief.
            raise
        step = self._chief_value(_step_of(path))
        if step < 0:
            raise CheckpointError(
                f"{self.directory}: the chief could not restore a checkpoint (its log says why)"
            )
        if self.is_chief or step == 0:
            return path
        path = os.path.join(self.directory, f"{CHECKPOINT_NAME}-{step}")
        if not tf.io.gfile.exists(path + ".index"):
            raise CheckpointError(
                f"{path}: the chief restored it, but {self.task} does not see "
                "it; every worker must reach --logdir on storage they share"
            )
        try:
            restore(self.checkpoint, path)
        except (tf.errors.OpError, IndexError) as e:
            raise CheckpointError(
                f"{path}: the chief restored it, but {self.task} cannot read it ({_first_line(e)})"
            ) from None
        return path

    def save(self, step: int) -> str:
        """Saves the state at `step`, once: a second save of the same step returns the first's
        path (an epoch end that is also a preemption point saves one checkpoint)."""
        if self._saved and self._saved[0] == step:
            return self._saved[1]
        name = f"{CHECKPOINT_NAME}-{step}"
        with disk.writing(
            self.manager.directory,
            f"saving checkpoint {name}",
            undo=lambda: self._remove_unlisted(name),
        ):
            path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            tf.io.gfile.rmtree(self.manager.directory)
        self._saved = (step, path)
        return path

    def _remove_unlisted(self, name: str) -> None:
        """Removes what a failed save of checkpoint `name` wrote; the state file never listed
        it, so nothing would ever read or delete it."""
        directory = self.manager.directory
        if not self.is_chief:
            disk.remove(directory)
        elif tf.io.gfile.isdir(directory):
            for entry in tf.io.gfile.listdir(directory):
                if entry.rstrip("/").startswith((f"{name}.", f"{name}_temp", "checkpoint.tmp")):
                    disk.remove(os.path.join(directory, entry))
