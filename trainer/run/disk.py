"""A write that fails on the filesystem: what it wrote is removed, and one line says where, why
and what next.

Every writer of a run's files (checkpoints, the export, TensorBoard's events, flags.txt,
data.json, result.json, run.lock) writes inside `writing(...)`. A full disk (or quota), a
permission denied, a read-only filesystem or an I/O error surfaces as whatever the writer's layer
raises: OSError from Python, an OpError from a TensorFlow op (SaveV2, MergeV2Checkpoints,
WriteSummary, a file_io write) whose message ends with the C library's words for the errno
(ResourceExhaustedError, also TensorFlow's out-of-memory error, for a full disk;
PermissionDeniedError; UnknownError for EIO). Each becomes a WriteError naming the directory,
what was being written, and what to do before a rerun resumes from the run's last whole
checkpoint, which the line names. Nothing written before is touched.
"""

import contextlib
import errno
import os
from collections.abc import Callable

import tensorflow as tf

from trainer.common.errors import OneLineError

_FULL = (errno.ENOSPC, errno.EDQUOT)
# {errno: (what the line says happened, what to do about it first)}; `{}` is the directory.
_FAULTS = {
    **{code: ("no space left on device", "free some space") for code in _FULL},
    errno.EACCES: ("permission denied", "let this user write to {}"),
    errno.EPERM: ("operation not permitted", "let this user write to {}"),
    errno.EROFS: ("read-only file system", "make the filesystem writable"),
    errno.EIO: (
        "input/output error",
        "check the disk or network filesystem (the kernel's log says more)",
    ),
}

# Each run's checkpoint directory, by run directory (noted by RunCheckpoints): a writer is
# handed only the path it writes, yet its message names the run's last whole checkpoint.
_checkpoint_dirs: dict[str, str] = {}


class WriteError(OneLineError, OSError):
    """A write failed on the filesystem; what it had written is removed; the message says what
    to do, and what a rerun resumes from."""


class DiskFullError(WriteError):
    """A write met a full disk (or quota)."""


def fault(error: BaseException) -> int | None:
    """The errno of a filesystem fault `writing` reports, or None for any other error."""
    if isinstance(error, OSError):
        return error.errno if error.errno in _FAULTS else None
    if isinstance(error, tf.errors.OpError):
        return next((code for code in _FAULTS if os.strerror(code) in error.message), None)
    return None


def is_full(error: BaseException) -> bool:
    return fault(error) in _FULL


def note_checkpoints(directory: str) -> None:
    """Records that the run whose files lie beside `directory` keeps its checkpoints there."""
    directory = os.path.abspath(directory)
    _checkpoint_dirs[os.path.dirname(directory)] = directory


@contextlib.contextmanager
def writing(directory: str, what: str, undo: Callable[[], None]):
    """Raises WriteError (DiskFullError on a full disk) if the block meets a filesystem fault,
    once `undo()` has removed what the block wrote."""
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        code = fault(error)
        if code is None:
            raise
        try:
            undo()
            undone = "removed what it had written"
        except (OSError, tf.errors.OpError):  # The same fault, as a read-only filesystem.
            undone = "could not remove what it had written"
        happened, remedy = _FAULTS[code]
        raise (DiskFullError if code in _FULL else WriteError)(
            f"{directory}: {happened} while {what} ({undone}); "
            f"{_next_step(directory, remedy.format(directory))}"
        ) from error


def _next_step(path: str, remedy: str) -> str:
    path = os.path.abspath(path)
    holding = [
        run_dir for run_dir in _checkpoint_dirs if os.path.commonpath([path, run_dir]) == run_dir
    ]
    if holding:  # The innermost: a process may have noted a run in a directory above this one.
        latest = tf.train.latest_checkpoint(_checkpoint_dirs[max(holding, key=len)])
        if latest:
            return (
                f"the last whole checkpoint is {latest}: {remedy} and rerun "
                "the same command to resume from it"
            )
    return f"no checkpoint was saved yet: {remedy} and rerun the same command to start the run"


def remove(path: str) -> None:
    """Removes a file or a directory tree, if there."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
