"""Restoring a run's state: the newest checkpoint that reads back, and clear words otherwise.

Saving needs nothing of ours: `tf.train.CheckpointManager` writes the checkpoint files first
and only then rewrites its small state file, atomically, so a job killed mid-save still lists
the previous checkpoint as the latest.
"""

import os

import tensorflow as tf
from absl import logging


class CheckpointError(ValueError):
    """No usable checkpoint where one is expected; the message names the file."""


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def restore_latest(checkpoint: tf.train.Checkpoint,
                   manager: tf.train.CheckpointManager) -> str | None:
    """Restores the newest readable checkpoint the manager lists and returns its path.

    A truncated or corrupted checkpoint is skipped for the one before it, with a warning; one
    written by a model of another shape is an error (every older one has that shape too).
    Returns None when there is no checkpoint yet.
    """
    for path in reversed(manager.checkpoints):
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except ValueError as e:
            # The wording differs between plain and mirrored variables.
            if "incompatible tensor with shape" in str(e) or "Shape mismatch" in str(e):
                raise CheckpointError(
                    f"{path}: written by a model of another shape ({_first_line(e)}); "
                    "train into another --logdir or --run_name") from None
            raise
        except (tf.errors.OpError, IndexError) as e:
            logging.warning("%s is unreadable (%s); trying the checkpoint before it",
                            path, _first_line(e))
            continue
        return path
    if manager.checkpoints:
        raise CheckpointError(f"{manager.directory}: none of the checkpoints "
                              f"{', '.join(manager.checkpoints)} can be read")
    return None


class RunCheckpoints:
    """A run's checkpoints, written the way TensorFlow's multi-worker guide asks.

    Every worker takes part in a save (the variables are read collectively), but only the
    chief's lands in the run's checkpoint directory; the others write to a private directory
    and delete it straight after. Every worker restores from the chief's directory.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int,
                 is_chief: bool = True, worker_id: int = 0):
        self.checkpoint = checkpoint
        self.is_chief = is_chief
        self.read_manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep)
        self.write_manager = self.read_manager if is_chief else tf.train.CheckpointManager(
            checkpoint, os.path.join(directory, f".worker-{worker_id}"), max_to_keep=1)
        self._saved = None  # (step, path) of this process's last save.

    @property
    def latest(self) -> str | None:
        return self.read_manager.latest_checkpoint

    def restore_latest(self) -> str | None:
        return restore_latest(self.checkpoint, self.read_manager)

    def save(self, step: int) -> str:
        """Saves the state at `step`, once: a second save of the same step returns the first's
        path (an epoch end that is also a preemption point saves one checkpoint)."""
        if self._saved and self._saved[0] == step:
            return self._saved[1]
        path = self.write_manager.save(checkpoint_number=step)
        if not self.is_chief:
            tf.io.gfile.rmtree(self.write_manager.directory)
        self._saved = (step, path)
        return path
