"""One trainer per run directory: a second one (a double launch, a requeued job whose first
attempt is still draining, two sweeps over one directory) is refused, naming the first.

The lock is the kernel's `flock` on `<run>/run.lock`, held by the chief for as long as its run
lasts. The kernel drops it when the holder ends however it ends, kill -9 included, so a rerun
after a crash never meets a stale lock; the file itself stays, naming the last holder. On NFS,
Linux maps flock to the server's byte-range locks, which hold across clients; on a filesystem
without locks the run goes on with a warning, unguarded.
"""

import contextlib
import datetime
import fcntl
import json
import os
import socket

from absl import logging

from trainer.common.errors import OneLineError
from trainer.run import disk

LOCK_FILE = "run.lock"


class RunInUse(OneLineError):
    """Another live trainer holds the run directory; the message names it."""


@contextlib.contextmanager
def hold(run_dir: str):
    """Holds `run_dir` for the `with` block; RunInUse if another process holds it."""
    path = os.path.join(run_dir, LOCK_FILE)
    with disk.writing(run_dir, f"creating {LOCK_FILE}", undo=lambda: None):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(
                f"{run_dir} is in use by another trainer ({_holder(fd)}); let it "
                "finish or stop it, or train into another --run_name or --logdir"
            ) from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP: a filesystem that has no locks.
            logging.warning(
                "cannot lock %s (%s): a second trainer on this run directory would not be refused",
                path,
                e.strerror,
            )
        else:
            _record_holder(fd)
        yield path
    finally:
        os.close(fd)  # Releases the lock.


def _record_holder(fd: int) -> None:
    """Writes who holds the lock, for the error a second trainer meets; best effort (on a full
    disk the lock holds without it)."""
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
    except OSError:
        pass


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "it has not said which yet"  # Between its lock and its record.
