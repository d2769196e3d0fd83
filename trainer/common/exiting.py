"""How the trainer's process ends: as soon as what it wrote is on disk.

Once a run has finished, stopped on SIGTERM or failed, nothing is left to compute, yet
TensorFlow's teardown can take up to a minute from the trainer's last line to its exit
(docs/fault-tolerance.md, "Exiting"), while Kubernetes and Slurm kill a job 30 s after SIGTERM.
The time goes into deleting the training batches' iterator as the run's objects are
released. Under MirroredStrategy each device's iterator has a thread autotuning its tf.data
pipeline, which sleeps between optimizations for twice as long each time, up to 60 s, and
deleting the iterator waits for that thread: it sometimes sleeps its period out instead of
waking (a train iterator used for 50 s can take 92 s to delete). Those per-device pipelines
are made by tf.distribute, out of reach of our tf.data options.

So the entry point runs `main` through `exit_promptly`: the train iterators are kept
(`keep_until_exit`) rather than deleted, what the run wrote is flushed and closed (summaries,
through what `close_before_exit` was given; log handlers, stdout and stderr; checkpoints and
exports are whole once their save returns), and the process leaves with os._exit and the exit
code Python would have given.
"""

import functools
import logging
import os
import sys
from collections.abc import Callable

from trainer.common import terminal
from trainer.common.exit_codes import INTERRUPTED_EXIT_CODE

# Objects whose deletion could hold up the exit, kept until os._exit ends the process. Only in
# a process that ends that way: elsewhere (tests, benchmarks) they are deleted as usual.
_kept = []
_ends_promptly = False
# What `leave` calls first, to close what Python's teardown would have closed.
_closers: list[Callable[[], None]] = []


def close_before_exit(close: Callable[[], None]) -> None:
    """Has `leave` call `close()` before the process ends (MetricsWriter closes its writers)."""
    _closers.append(close)


def keep_until_exit(obj):
    """Returns `obj`; in a process that ends through `exit_promptly`, it is never deleted."""
    if _ends_promptly:
        _kept.append(obj)
    return obj


def exit_promptly(main):
    """Wraps an absl `main(argv)`: its return or sys.exit ends the process at once, with the
    same exit code and message."""

    @functools.wraps(main)
    def run(argv):
        global _ends_promptly
        _ends_promptly = True
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        except KeyboardInterrupt:  # Ctrl-C before the run could hold it: nothing to save.
            print(terminal.interrupted_line(), file=sys.stderr)
            code = INTERRUPTED_EXIT_CODE
        leave(code)

    return run


def leave(code: int | str | None) -> None:
    """Flushes and closes every summary writer, log handler and standard stream, then ends the
    process, as `sys.exit(code)` would: None is 0, a message goes to stderr and is 1."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:
        print(code, file=sys.stderr)
        status = 1
    for close in _closers:
        close()
    logging.shutdown()  # What Python's exit would do: flushes and closes every log handler.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)
