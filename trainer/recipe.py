"""`train_and_evaluate(config)`: the whole training run, read top to bottom like a recipe.

Sections: devices and strategy, input pipeline, run directory, train state, checkpoint (resume
on start), train loop, final test score and export. The step lives in step/steps.py, the
state in step/state.py, the loop's cadence in loop/controller.py and what it does between
runs in loop/actions.py, resuming and recovering in loop/resumable.py, the run directory in
run/directory.py; this file only puts them together.
"""

import contextlib
import dataclasses
import os

import tensorflow as tf
from absl import logging

from trainer.config import TrainConfig
from trainer.distribution import strategies, workers
from trainer.loop import actions, preemption
from trainer.loop.controller import Controller
from trainer.loop.resumable import Resumable
from trainer.reporting.progress import Progress
from trainer.reporting.tensorboard import MetricsWriter
from trainer.run import directory, files, training_data
from trainer.run.checkpoints import RunCheckpoints
from trainer.run.export import export_once
from trainer.step.inputs import Inputs
from trainer.step.machine_fit import fit_to_machine
from trainer.step.state import DivergenceError, build_train_state, check_optimizer

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


def train_and_evaluate(config: TrainConfig) -> TrainResult:
    config.validate()
    check_optimizer(config)
    directory.check_not_finished(config)  # Raises RunFinished: a rerun reports, never retrains.

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
    data = training_data.load(config, strategy, config.run_dir())
    inputs = Inputs(strategy, data, config.batch_size, config.seed, config.grad_accum_steps)
    steps_per_epoch = inputs.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs

    # Run directory, once the settings are known to work: same settings, same directory, so
    # a rerun resumes (and must compute the same thing).
    run_dir = directory.prepare(config)
    directory.lock_for_the_job(run_dir, strategy, until_the_run_ends)
    if chief:
        directory.check_not_finished(config)  # By a trainer that held the lock a moment ago?
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
    logging.info("weights fingerprint at step %d: %s", step, state.weights_fingerprint())
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
