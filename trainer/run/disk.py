"""A full disk: what was being written is removed, and one line says where and what next.

Every writer of a run's files (checkpoints, the export, TensorBoard's events, flags.txt,
data.json, result.json) writes inside `writing(...)`. A full disk (or quota) surfaces as
whatever the writer's layer raises: OSError from Python, ResourceExhaustedError from a
TensorFlow op (SaveV2, MergeV2Checkpoints, WriteSummary, a file_io write), which is also
TensorFlow's out-of-memory error, so the message tells them apart. Either becomes a
DiskFullError naming the directory, what was being written and the run's last whole
checkpoint: what a rerun resumes from once there is space.
"""

import contextlib
import errno
import os
from collections.abc import Callable

import tensorflow as tf

from trainer.common.errors import OneLineError

_FULL = (errno.ENOSPC, errno.EDQUOT)

# Each run's checkpoint directory, by run directory (noted by RunCheckpoints): a writer is
# handed only the path it writes, yet its message names the run's last whole checkpoint.
_checkpoint_dirs: dict[str, str] = {}


class DiskFullError(OneLineError, OSError):
    """A write met a full disk; what it had written is removed; the message says what a rerun
    resumes from."""


def is_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in _FULL
    return isinstance(error, tf.errors.ResourceExhaustedError) and any(
        os.strerror(code) in error.message for code in _FULL
    )


def note_checkpoints(directory: str) -> None:
    """Records that the run whose files lie beside `directory` keeps its checkpoints there."""
    directory = os.path.abspath(directory)
    _checkpoint_dirs[os.path.dirname(directory)] = directory


@contextlib.contextmanager
def writing(directory: str, what: str, undo: Callable[[], None]):
    """Raises DiskFullError if the block meets a full disk, once `undo()` has removed what the
    block wrote."""
    try:
        yield
    except (OSError, tf.errors.ResourceExhaustedError) as error:
        if not is_full(error):
            raise
        undo()
        raise DiskFullError(
            f"{directory}: no space left on device while {what} (removed what "
            f"it had written); {_next_step(directory)}"
        ) from error


def _next_step(path: str) -> str:
    path = os.path.abspath(path)
    for run_dir, checkpoints in _checkpoint_dirs.items():
        if os.path.commonpath([path, run_dir]) == run_dir:
            latest = tf.train.latest_checkpoint(checkpoints)
            if latest:
                return (
                    f"the last whole checkpoint is {latest}: free some space and rerun "
                    "the same command to resume from it"
                )
    return (
        "no checkpoint was saved yet: free some space and rerun the same command to start the run"
    )


def remove(path: str) -> None:
    """Removes a file or a directory tree, if there."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
