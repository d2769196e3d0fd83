"""SIGTERM, what schedulers send before they kill a job, as a request to stop at a step boundary.

On one machine a signal handler only sets a flag: the train loop checks it between compiled
calls, saves a checkpoint of the steps completed and stops. Across several workers one worker's
signal must stop them all at the same step, which TensorFlow's own
`PreemptionCheckpointHandler` coordinates; `watch(...)` picks the right one.

A scheduler may signal a job that has only just (re)started, before the run has restored its
checkpoint and `watch` begins: `held_sigterm()`, entered as soon as the strategy exists, keeps
such a SIGTERM for `watch`, which acts on it at the first step boundary.
"""

import contextlib
import signal
import threading
from typing import Callable

import tensorflow as tf
from absl import logging

from trainer.checkpointing import RunCheckpoints

# 128 + SIGTERM: what the job would have returned had the signal killed it, so schedulers
# restart it as they would any preempted job; this time it has saved its steps first.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
    """SIGTERM arrived; the steps completed are checkpointed."""


_held = threading.Event()  # A SIGTERM arrived inside held_sigterm(), before watch().


@contextlib.contextmanager
def held_sigterm():
    """Inside it, a SIGTERM is kept for `watch`, which acts on it at the first step boundary;
    on leaving, SIGTERM means again what it meant before.

    Entered once the strategy exists: MultiWorkerMirroredStrategy's runtime sets a SIGTERM
    handler of its own in C++ (TensorFlow's preemption notifier), which took such a signal and
    told nothing of ours, so the job trained on as if never signalled. (Before the strategy,
    SIGTERM still ends the process at once: nothing has been done yet.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Only the main thread may set handlers; elsewhere SIGTERM keeps its meaning.
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _held.set())
    try:
        yield
    finally:
        _held.clear()
        signal.signal(signal.SIGTERM, previous)


def _pass_on_held_sigterm() -> None:
    """Raises again a SIGTERM that held_sigterm kept, for the handler now in place."""
    if _held.is_set():
        _held.clear()
        logging.info("SIGTERM arrived while the run was starting; stopping at the first step")
        signal.raise_signal(signal.SIGTERM)


class SigtermWatcher:
    """One process: `requested` turns True once SIGTERM arrives inside the `with` block.

    `save_if_preempted(step)` then saves a checkpoint, and the loop stops by itself.
    """

    def __init__(self, save: Callable[[int], str]):
        self.requested = False
        self._save = save
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def save_if_preempted(self, step: int) -> None:
        if self.requested:
            logging.info("saved %s", self._save(step))

    def __enter__(self):
        # Signal handlers can only be set from the main thread; elsewhere (a caller's worker
        # thread) SIGTERM keeps its default meaning.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            _pass_on_held_sigterm()
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class ClusterPreemption:
    """Several workers: TensorFlow's handler aligns them, we save, and we raise Preempted.

    `save_if_preempted(step)` must be called by every worker after the same compiled calls.
    """

    requested = False  # The handler stops the loop itself, by raising.

    def __init__(self, cluster_resolver, checkpoints: RunCheckpoints):
        self._step = 0
        self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
            cluster_resolver, _RestoredAlready(tf.train.Checkpoint(), checkpoints.directory),
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=self._stop,
                # Our save: into the run's directory on the chief, cleaned up on the others.
                save_fn=lambda checkpoint_number: checkpoints.save(checkpoint_number)))

    def _stop(self):
        raise Preempted(f"SIGTERM: stopped at step {self._step} with a checkpoint saved "
                        "by every worker; rerun the same command to resume")

    def save_if_preempted(self, step: int) -> None:
        self._step = step
        self._handler.save_checkpoint_if_preempted(checkpoint_number=step)

    def __enter__(self):
        _pass_on_held_sigterm()  # To TensorFlow's handler, set when it was created.
        return self

    def __exit__(self, *exc_info):
        pass


class _RestoredAlready(tf.train.CheckpointManager):
    """The manager PreemptionCheckpointHandler is handed, for what it does on creation: restore
    the newest checkpoint listed. The run has restored already, the checkpoint every worker
    agreed on, which is not the newest when that one is unreadable; saves go to save_fn."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str):
        super().__init__(checkpoint, directory, max_to_keep=1)

    def restore_or_initialize(self):
        return None


def watch(strategy: tf.distribute.Strategy, checkpoints: RunCheckpoints):
    """The SIGTERM watcher for this strategy, to use as a context manager."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.cluster_spec().jobs:
        return ClusterPreemption(resolver, checkpoints)
    return SigtermWatcher(checkpoints.save)
