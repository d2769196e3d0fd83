"""`train_and_evaluate(config)`: the whole training run, read top to bottom like a recipe.

Sections: devices and strategy, input pipeline, run directory, train state, checkpoint (resume
on start), train loop, final test score and export. The step lives in step/steps.py, the
state in step/state.py, the loop's cadence in loop/controller.py and what it does between
runs in loop/actions.py; this file only puts them together.
"""

import contextlib
import dataclasses
import hashlib
import os

import tensorflow as tf
from absl import logging

from trainer.common import machine as machine_description
from trainer.config import ConfigError, TrainConfig, flagfile_values
from trainer.distribution import strategies, workers
from trainer.loop import actions, preemption
from trainer.loop.controller import Controller
from trainer.reporting.progress import Progress
from trainer.reporting.tensorboard import MetricsWriter
from trainer.run import files, lock, training_data
from trainer.run.checkpoints import RunCheckpoints
from trainer.run.export import export
from trainer.step import machine_fit
from trainer.step.inputs import Inputs
from trainer.step.state import DivergenceError, TrainState, build_train_state

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    steps: int
    test_accuracy: float
    test_loss: float
    export_dir: str
    # [first, last] step of each window whose batches were skipped after a divergence.
    skipped_windows: list[list[int]] = dataclasses.field(default_factory=list)


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


def train_and_evaluate(config: TrainConfig) -> TrainResult:
    config.validate()
    check_not_finished(config)  # Raises RunFinished: a rerun reports, never retrains.

    # Devices and strategy.
    if config.deterministic:  # Process-wide; our own randomness is already seeded.
        tf.config.experimental.enable_op_determinism()
    strategy = strategies.create_strategy(config.strategy, config.cpu_replicas)
    # From here on a SIGTERM or Ctrl-C, however early, stops the run at its first step boundary.
    with preemption.held_stop_signals(), contextlib.ExitStack() as until_the_run_ends:
        return _train_and_evaluate(config, strategy, until_the_run_ends)


def _train_and_evaluate(
    config: TrainConfig, strategy: tf.distribute.Strategy, until_the_run_ends: contextlib.ExitStack
) -> TrainResult:
    chief = workers.is_chief(strategy)  # Only the chief writes files of the run.
    logging.info("%s", workers.describe(strategy))
    config = fit_to_machine(config, strategy)  # flags.txt records what it chose.

    # Input pipeline, on the run's data: the same on every worker and across resumptions.
    data = training_data.load(config, strategy, os.path.join(config.logdir, config.run_dir_name()))
    inputs = Inputs(strategy, data, config.batch_size, config.seed, config.grad_accum_steps)
    steps_per_epoch = inputs.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs

    # Run directory, once the settings are known to work: same settings, same directory, so
    # a rerun resumes (and must compute the same thing).
    run_dir = prepare_run_dir(config)
    lock_run_dir(run_dir, strategy, until_the_run_ends)
    if chief:
        check_not_finished(config)  # By a trainer that held the lock until a moment ago?
        files.write_flags(run_dir, config.flagfile())  # Kept as is on a resumption.
        files.write_data(run_dir, training_data.record(data))  # So is this.

    # Train state: model, optimizer, metrics and compiled loops, under the strategy's scope.
    state = build_train_state(strategy, config, steps_per_epoch)

    # Checkpoint: resume from the newest readable one in the run directory.
    checkpoints = RunCheckpoints(
        state.checkpoint(),
        os.path.join(run_dir, CHECKPOINT_DIR),
        config.max_checkpoints,
        chief,
        workers.task_name(strategy),
        chief_value=lambda value: workers.chief_value(strategy, value),
    )
    run = Resumable(state, inputs, checkpoints, config.nonfinite_retries)
    step = run.resume()
    writer = MetricsWriter(run_dir, is_chief=chief)
    writer.write_text(step, {"config/flags": "```\n" + config.flagfile() + "```"})

    # Train loop: compiled runs of steps; between them the periodic actions, each with its
    # own cadence; a stop on SIGTERM or Ctrl-C, and on divergence once the retries are spent.
    with preemption.watch(strategy, checkpoints) as stop_signals:
        periodic = [
            actions.WriteTrainScalars(writer),
            actions.WriteGraph(writer),
            actions.WriteHistograms(config.histogram_every_steps or steps_per_epoch, state, writer),
            actions.Evaluate(steps_per_epoch, state, *inputs.eval_set("validation"), writer),
            actions.WriteMisclassified(steps_per_epoch, state, data.validation, writer),
            actions.ReportProgress(Progress(step, total_steps, steps_per_epoch, enabled=chief)),
            actions.SaveCheckpoint(
                [steps_per_epoch, config.checkpoint_every_steps], checkpoints, writer
            ),
            actions.SaveIfPreempted(stop_signals),  # Across workers: saves, raises Preempted.
        ]
        if chief and config.profile_steps:
            periodic.append(actions.Profile(run_dir, *config.profile_steps))
        step = Controller(
            run.train,
            periodic,
            total_steps,
            config.steps_per_loop,
            stop_requested=lambda: stop_signals.requested,
            recoverable=(DivergenceError,),
            recover=run.recover,
        ).run(step)
    if step < total_steps:
        writer.close()
        raise stop_signals.stopped(step, total_steps)

    # Final test score and export.
    test = state.evaluate(*inputs.eval_set("test"), averaged=state.ema_model is not None)
    writer.write_scalars(step, {"test/loss": test["loss"], "test/accuracy": test["accuracy"]})
    writer.close()
    # Every worker holds the same weights; this line lets a person (and a test) check it.
    logging.info("weights fingerprint at step %d: %s", step, weights_fingerprint(state.model))
    result = TrainResult(
        run_dir=run_dir,
        steps=step,
        test_accuracy=test["accuracy"],
        test_loss=test["loss"],
        export_dir=os.path.join(run_dir, EXPORT_DIR, str(step)),
        skipped_windows=state.skipped_windows.numpy().tolist(),
    )
    if chief:
        export_once(state.final_model, result.export_dir)  # The averages, with an EMA.
        files.write_result(run_dir, result)
    return result


class Resumable:
    """The train state and its batches, positioned at the newest readable checkpoint: where a
    run starts, and where it goes back to when a compiled run of steps diverges."""

    def __init__(
        self, state: TrainState, inputs: Inputs, checkpoints: RunCheckpoints, retries: int
    ):
        self.state, self.inputs, self.checkpoints = state, inputs, checkpoints
        self.retries_left = retries
        self.batches = self.restored_from = None

    def resume(self) -> int:
        """Restores the chief's newest readable checkpoint (if any); returns its step, in steps
        taken (`TrainState.step`: with loss scaling, the skipped ones too)."""
        self._restore()
        self.batches = self.inputs.train_batches(self.state.data_position)
        return self.state.step

    def train(self, step: int, num_steps: int) -> dict:
        return self.state.train(self.batches, num_steps)

    def recover(self, error: DivergenceError) -> int:
        """Back to the last good checkpoint (nothing of the failed run was saved), past the
        batches that diverged, as large runs do; raises DivergenceError once the retries are
        spent. Every worker decides alike: they all met the same non-finite values (gradients
        are summed across them) and restore the checkpoint the chief picks."""
        if not self.retries_left:
            raise DivergenceError(
                f"{error}; stopping. The run's checkpoints hold no NaN: "
                "the last one is where to go on from.",
                error.step,
            ) from None
        self.retries_left -= 1
        logging.warning(
            "%s; restoring the last good checkpoint (%d retries left)", error, self.retries_left
        )
        self._restore()
        if self.restored_from is None:
            raise DivergenceError(
                f"{error}; stopping: no checkpoint to go back to "
                "(--checkpoint_every_steps saves more often)",
                error.step,
            ) from None
        # Replaying the same batches from the same weights would diverge again.
        first, last = self.state.step + 1, max(error.step, self.state.step + 1)
        self.state.skip_window(first, last)
        logging.warning(
            "skipping the batches of steps %d-%d, on which training diverged", first, last
        )
        self.batches = self.inputs.train_batches(self.state.data_position)
        return self.state.step

    def _restore(self) -> None:
        path = self.restored_from = self.checkpoints.restore()
        if path:
            logging.info("resumed from %s at step %d", path, self.state.step)


def export_once(model: tf.Module, export_dir: str) -> None:
    """Exports the SavedModel, unless a rerun of a finished run finds it there already."""
    if os.path.exists(export_dir):
        logging.info(
            "export for step %s already in %s; kept as it is",
            os.path.basename(export_dir),
            export_dir,
        )
    else:
        export(model, export_dir)
        logging.info("exported SavedModel to %s", export_dir)


def prepare_run_dir(config: TrainConfig) -> str:
    """Creates logdir/<run>, checks it is writable, and that a run already there (its
    flags.txt) computes what `config` computes."""
    if os.path.exists(config.logdir) and not os.path.isdir(config.logdir):
        raise ConfigError(f"--logdir={config.logdir}: is a file, not a directory")
    run_dir = os.path.join(config.logdir, config.run_dir_name())
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


def lock_run_dir(
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


def check_not_finished(config: TrainConfig) -> None:
    """Raises ConfigError if the run `config` names was started with other settings (before
    its data is loaded, whose record would say less), and RunFinished if it has its
    result.json."""
    run_dir = os.path.join(config.logdir, config.run_dir_name())
    _check_same_settings(config, run_dir)
    result = files.read_result(run_dir)
    if result is not None:
        raise RunFinished(run_dir, result)


def _check_same_settings(config: TrainConfig, run_dir: str) -> None:
    started = files.read_flags(run_dir)
    if started is not None:  # A resumption.
        config.check_resumable(started, os.path.join(run_dir, files.FLAGS_FILE))


def fit_to_machine(config: TrainConfig, strategy: tf.distribute.Strategy) -> TrainConfig:
    """The config with --jit_compile=auto decided: as the run started, on a resumption, else
    from this machine; the chief's choice on every worker (a collective). Refuses
    mixed_bfloat16 where it would abort, and warns where it is slow."""
    machine = machine_description.describe()
    machine_fit.check_bfloat16_can_run(config.precision, machine)
    machine_fit.warn_if_bfloat16_is_slow(config.precision, machine)
    if config.jit_compile != "auto":
        return config
    run_dir = os.path.join(config.logdir, config.run_dir_name())
    started = flagfile_values(files.read_flags(run_dir) or "").get("jit_compile", "").lower()
    if started in ("true", "false"):
        xla, why = started == "true", f"the run in {run_dir} started with it"
    else:
        xla, why = machine_fit.choose_jit_compile(machine)
    if workers.chief_value(strategy, int(xla)) != xla:
        xla, why = not xla, "the chief's choice, for the whole job"
    logging.info(
        "--jit_compile=auto: %s (%s)",
        "XLA compiles forward and backward" if xla else "no XLA for forward and backward",
        why,
    )
    return dataclasses.replace(config, jit_compile="true" if xla else "false")


def weights_fingerprint(model: tf.Module) -> str:
    """SHA-256 of every weight's bytes: equal on two workers iff their weights are equal."""
    digest = hashlib.sha256()
    for variable in model.trainable_variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]
