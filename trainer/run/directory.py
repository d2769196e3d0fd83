"""A run's directory: one per set of settings, made once they are known to work, and never
trained into again once its run has finished.

`config.run_dir()` names it; a rerun of the same settings resumes it, and a run there that was
started with other settings is refused (its flags.txt says which).
"""

import contextlib
import os

import tensorflow as tf
from absl import logging

from trainer.config import ConfigError, TrainConfig
from trainer.distribution import workers
from trainer.run import files, lock


class RunFinished(Exception):
    """The run asked for finished before: nothing is trained again. `result` is its
    result.json."""

    def __init__(self, run_dir: str, result: dict):
        super().__init__(
            f"{run_dir} finished before: test accuracy {result['test_accuracy']:.4f} after "
            f"{result['steps']} steps; nothing was trained. To train anew, change a setting "
            "that names the run, or pass another --run_name or --logdir"
        )
        self.result = result


def check_not_finished(config: TrainConfig) -> None:
    """Raises ConfigError if the run `config` names was started with other settings (before
    its data is loaded, whose record would say less), and RunFinished if it has its
    result.json."""
    run_dir = config.run_dir()
    _check_same_settings(config, run_dir)
    result = files.read_result(run_dir)
    if result is not None:
        raise RunFinished(run_dir, result)


def _check_same_settings(config: TrainConfig, run_dir: str) -> None:
    started = files.read_flags(run_dir)
    if started is not None:  # A resumption.
        config.check_resumable(started, os.path.join(run_dir, files.FLAGS_FILE))


def prepare(config: TrainConfig) -> str:
    """Creates logdir/<run>, checks it is writable, and that a run already there (its
    flags.txt) computes what `config` computes."""
    if os.path.exists(config.logdir) and not os.path.isdir(config.logdir):
        raise ConfigError(f"--logdir={config.logdir}: is a file, not a directory")
    run_dir = config.run_dir()
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"--logdir={config.logdir}: cannot create {run_dir} ({e.strerror})"
        ) from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"--logdir={config.logdir}: {run_dir} is not writable")
    logging.info("run directory: %s", run_dir)
    _check_same_settings(config, run_dir)
    return run_dir


def lock_for_the_job(
    run_dir: str, strategy: tf.distribute.Strategy, until_the_run_ends: contextlib.ExitStack
) -> None:
    """One trainer (one job) per run directory: the chief holds its lock until the run ends.
    Raises RunInUse on every worker when another holds it: the chief tells the others (a
    collective), so a second job stops whole rather than lose its chief as a peer."""
    refused = None
    if workers.is_chief(strategy):
        try:
            until_the_run_ends.enter_context(lock.hold(run_dir))
        except lock.RunInUse as e:
            refused = e
    if workers.chief_value(strategy, int(refused is not None)):
        raise refused or lock.RunInUse(
            f"{run_dir} is in use by another trainer (the chief's error names it)"
        )
