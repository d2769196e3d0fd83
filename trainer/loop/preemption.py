"""SIGTERM (what schedulers send before they kill a job) and Ctrl-C (SIGINT, what a person
sends) as requests to stop at a step boundary, with a checkpoint of the steps completed.

On one machine a signal handler only sets a flag: the train loop checks it between compiled
calls, saves a checkpoint of the steps completed and stops. Across several workers one worker's
signal must stop them all at the same step, which TensorFlow's own
`PreemptionCheckpointHandler` coordinates (a Ctrl-C is passed to it as a SIGTERM); `watch(...)`
picks the right one. The process then exits 143 after SIGTERM, for a scheduler to restart it,
and 130 after Ctrl-C, as a program interrupted from the keyboard does. A second Ctrl-C stops
the process at once, losing the steps since the last checkpoint.

A scheduler may signal a job that has only just (re)started, before the run has restored its
checkpoint and `watch` begins: `held_stop_signals()`, entered as soon as the strategy exists,
keeps such a signal for `watch`, which acts on it at the first step boundary.
"""

import contextlib
import signal
import threading
from collections.abc import Callable

import tensorflow as tf
from absl import logging

from trainer.common import ctrl_c
from trainer.common.exit_codes import PREEMPTED_EXIT_CODE
from trainer.run.checkpoints import RunCheckpoints

# How the line a stop ends with names each signal.
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class Preempted(Exception):
    """SIGTERM or Ctrl-C arrived; the steps completed are checkpointed. `exit_code` is the
    process's: 143 after SIGTERM, 130 after Ctrl-C."""

    def __init__(self, message: str, exit_code: int = PREEMPTED_EXIT_CODE):
        super().__init__(message)
        self.exit_code = exit_code


def stopped(
    signum: int, step: int, total_steps: int | None = None, saved_by: str = "saved"
) -> Preempted:
    """The Preempted a stop by `signum` at `step` ends with; `saved_by` says who saved its
    checkpoint, or is None when the run stopped before training a step (nothing new to save)."""
    of_total = f" of {total_steps}" if total_steps else ""
    what = f"with a checkpoint {saved_by}" if saved_by else "before training a step"
    return Preempted(
        f"{_NAMES[signum]}: stopped at step {step}{of_total} {what}; rerun the "
        "same command to resume",
        128 + signum,
    )


_held = []  # The stop signals that arrived inside held_stop_signals(), before watch().


# The first Ctrl-C is answered at once, while the loop acts on it at its next step boundary;
# a second ends the process at once.
_ctrl_c = ctrl_c.CtrlCCounter(
    ends_at=2,
    answers=(
        "Ctrl-C: stopping at the next step boundary with a checkpoint; Ctrl-C again stops at "
        "once, losing the steps since then",
    ),
    last_line="Ctrl-C again: stopping at once",
)


def _set_handlers(handler) -> dict:
    """Sets `handler` for SIGTERM and SIGINT; returns what was there before."""
    return {signum: signal.signal(signum, handler) for signum in _NAMES}


def _restore_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@contextlib.contextmanager
def held_stop_signals():
    """Inside it, a SIGTERM or Ctrl-C is kept for `watch`, which acts on it at the first step
    boundary (a second Ctrl-C ends the process at once); on leaving, both mean again what they
    meant before.

    Entered once the strategy exists: MultiWorkerMirroredStrategy's runtime sets a SIGTERM
    handler of its own in C++ (TensorFlow's preemption notifier), which takes such a signal
    without calling ours, so a handler set before it would never run and the job would train
    on as if never signalled. (Before the strategy, SIGTERM ends the process at once, and
    Ctrl-C is one line: nothing has been done yet.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Only the main thread may set handlers; elsewhere signals keep their meaning.
        return
    previous = _set_handlers(lambda signum, frame: _held.append(signum))
    try:
        with _ctrl_c:
            yield
    finally:
        _held.clear()
        _restore_handlers(previous)


def _take_held_signals() -> list[int]:
    """The signals held_stop_signals kept (once each), for the watch now beginning."""
    held = list(dict.fromkeys(_held))
    _held.clear()
    for signum in held:
        logging.info(
            "%s arrived while the run was starting; stopping at the first step", _NAMES[signum]
        )
    return held


class SignalWatcher:
    """One process: `requested` turns True once SIGTERM or Ctrl-C arrives inside the `with`
    block (or held before it).

    `save_if_preempted(step)` then saves a checkpoint, and the loop stops by itself.
    """

    def __init__(self, save: Callable[[int], str]):
        self.received = None  # The first stop signal.
        self._save = save
        self._saved = False  # A stop requested before the first step has nothing to save.
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def _receive(self, signum: int) -> None:
        if self.received is None:
            self.received = signum

    def save_if_preempted(self, step: int) -> None:
        if self.requested:
            logging.info("saved %s", self._save(step))
            self._saved = True

    def stopped(self, step: int, total_steps: int) -> Preempted:
        return stopped(self.received, step, total_steps, "saved" if self._saved else None)

    def __enter__(self):
        # Signal handlers can only be set from the main thread; elsewhere (a caller's worker
        # thread) the signals keep their default meaning.
        if threading.current_thread() is threading.main_thread():
            self._previous = _set_handlers(lambda signum, frame: self._receive(signum))
            for signum in _take_held_signals():
                self._receive(signum)
        return self

    def __exit__(self, *exc_info):
        _restore_handlers(self._previous)


class ClusterPreemption:
    """Several workers: TensorFlow's handler aligns them, we save, and we raise Preempted.

    `save_if_preempted(step)` must be called by every worker after the same compiled calls.
    TensorFlow's handler watches SIGTERM only: a Ctrl-C is passed to it as one, and this
    worker then exits 130 (the others, told by it, 143).
    """

    requested = False  # The handler stops the loop itself, by raising.

    def __init__(self, cluster_resolver, checkpoints: RunCheckpoints):
        self._step = 0
        self._signum = signal.SIGTERM
        self._previous = {}
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            cluster_resolver,
            _RestoredAlready(tf.train.Checkpoint(), checkpoints.directory),
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=self._stop,
                # Our save: into the run's directory on the chief, cleaned up on the others.
                save_fn=lambda checkpoint_number: checkpoints.save(checkpoint_number),
            ),
        )

    def _stop(self):
        raise stopped(self._signum, self._step, saved_by="saved by every worker")

    def save_if_preempted(self, step: int) -> None:
        self._step = step
        self._handler.save_checkpoint_if_preempted(checkpoint_number=step)

    def _pass_on(self, signum: int) -> None:
        if signum == signal.SIGINT:
            self._signum = signal.SIGINT
        signal.raise_signal(signal.SIGTERM)  # To TensorFlow's handler, set when it was created.

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                signal.SIGINT: signal.signal(
                    signal.SIGINT, lambda signum, frame: self._pass_on(signum)
                )
            }
            for signum in _take_held_signals():
                self._pass_on(signum)
        return self

    def __exit__(self, *exc_info):
        _restore_handlers(self._previous)


class _RestoredAlready(tf.train.CheckpointManager):
    """The manager PreemptionCheckpointHandler is handed, for what it does on creation: restore
    the newest checkpoint listed. The run has restored already, the checkpoint every worker
    agreed on, which is not the newest when that one is unreadable; saves go to save_fn."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str):
        super().__init__(checkpoint, directory, max_to_keep=1)

    def restore_or_initialize(self):
        return None


def watch(strategy: tf.distribute.Strategy, checkpoints: RunCheckpoints):
    """The stop-signal watcher for this strategy, to use as a context manager."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.cluster_spec().jobs:
        return ClusterPreemption(resolver, checkpoints)
    return SignalWatcher(checkpoints.save)
