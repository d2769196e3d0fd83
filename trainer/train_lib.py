"""`train_and_evaluate(config)`: the whole training run, read top to bottom like a recipe.

Sections: devices and strategy, input pipeline, run directory, model and optimizer, compiled
steps, checkpoint (resume on start), train loop (log, evaluate, checkpoint; stop on SIGTERM or
divergence), final test score and export. The inner step lives in steps.py; this file only decides when things run.
"""

import dataclasses
import hashlib
import math
import os
import time

import tensorflow as tf
from absl import logging

from data import mnist
from models.mlp import MLP
from trainer import distribute, optimizers, preemption, run_files
from trainer.checkpointing import RunCheckpoints
from trainer.config import ConfigError, TrainConfig
from trainer.export import export
from trainer.metrics import ClassificationMetrics
from trainer.metrics_writer import MetricsWriter
from trainer.progress import Progress
from trainer.steps import compile_loop, make_eval_step, make_train_step
from trainer.summaries import ProfileWindow, misclassified_grid, state_histograms

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"


class DivergenceError(FloatingPointError):
    """The loss or a gradient stopped being finite; the message names the step."""


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    steps: int
    test_accuracy: float
    test_loss: float
    export_dir: str


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    """A float for `constant`; for `cosine`, optional linear warm-up then cosine decay to 0."""
    if config.lr_schedule == "constant":
        return config.learning_rate
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    decay_steps = config.epochs * steps_per_epoch - warmup_steps
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else config.learning_rate,
        decay_steps=decay_steps, warmup_steps=warmup_steps,
        warmup_target=config.learning_rate if warmup_steps else None)


def prepare_run_dir(config: TrainConfig) -> str:
    """Creates logdir/<run> and checks it is writable, before any training work."""
    if os.path.exists(config.logdir) and not os.path.isdir(config.logdir):
        raise ConfigError(f"--logdir={config.logdir}: is a file, not a directory")
    run_dir = os.path.join(config.logdir, config.run_dir_name())
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--logdir={config.logdir}: cannot create {run_dir} ({e.strerror})")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"--logdir={config.logdir}: {run_dir} is not writable")
    return run_dir


def weights_fingerprint(model: tf.Module) -> str:
    """SHA-256 of every weight's bytes: equal on two workers iff their weights are equal."""
    digest = hashlib.sha256()
    for variable in model.trainable_variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]


def evaluate(eval_loop, metrics: ClassificationMetrics, dataset, num_batches: int):
    metrics.reset()
    eval_loop(iter(dataset), tf.constant(num_batches))
    return metrics.result()


def train_and_evaluate(config: TrainConfig) -> TrainResult:
    config.validate()

    # Devices and strategy.
    if config.deterministic:  # Process-wide; our own randomness is already seeded.
        tf.config.experimental.enable_op_determinism()
    strategy = distribute.create_strategy(config.strategy, config.cpu_replicas)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ConfigError(f"--batch_size={config.batch_size}: must be divisible by the "
                          f"{replicas} replicas in sync")
    chief = distribute.is_chief(strategy)  # Only the chief writes files of the run.
    logging.info("%s with %d replica(s)%s: %s", type(strategy).__name__, replicas,
                 "" if chief else f" (worker {distribute.worker_id(strategy)})",
                 ", ".join(strategy.extended.worker_devices))

    # Input pipeline.
    data = mnist.load(config.data_source, config.data_dir)
    steps_per_epoch = len(data.train) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch_size={config.batch_size}: larger than the "
                          f"{len(data.train)} training examples")
    eval_batches = {name: -(-len(split) // config.batch_size)
                    for name, split in (("validation", data.validation), ("test", data.test))}
    eval_datasets = {name: strategy.experimental_distribute_dataset(
                         mnist.eval_dataset(getattr(data, name), config.batch_size))
                     for name in eval_batches}

    # Run directory, once the settings are known to work: same settings, same directory, so
    # a rerun resumes.
    run_dir = prepare_run_dir(config)
    logging.info("run directory: %s", run_dir)
    flags_path = os.path.join(run_dir, run_files.FLAGS_FILE)
    if os.path.exists(flags_path):  # A resumption: the first run's flags.txt stays.
        with open(flags_path) as f:
            config.check_resumable(f.read(), flags_path)

    # Model and optimizer: every variable, optimizer state included, under the scope.
    with strategy.scope():
        model = MLP(mnist.NUM_PIXELS, config.hidden_sizes, mnist.NUM_CLASSES, seed=config.seed)
        optimizer = optimizers.create(config.optimizer,
                                      learning_rate_schedule(config, steps_per_epoch),
                                      jit_compile=config.xla_update)
        optimizer.build(model.trainable_variables)
        train_metrics = ClassificationMetrics("train_metrics")
        eval_metrics = ClassificationMetrics("eval_metrics")

    # Compiled steps.
    train_loop = compile_loop(strategy, make_train_step(model, optimizer, train_metrics,
                                                        config.batch_size))
    eval_loop = compile_loop(strategy, make_eval_step(model, eval_metrics))

    # Checkpoint: resume from the newest readable one in the run directory.
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    checkpoints = RunCheckpoints(checkpoint, os.path.join(run_dir, CHECKPOINT_DIR),
                                 config.max_checkpoints, chief, distribute.worker_id(strategy))

    def restore() -> int:
        path = checkpoints.restore_latest()
        step = int(optimizer.iterations.numpy())
        if path:
            logging.info("resumed from %s at step %d", path, step)
        return step

    def batches_from(step: int):
        # The data order is a pure function of (seed, epoch): skip what was consumed.
        epoch, done = divmod(step, steps_per_epoch)
        return iter(strategy.experimental_distribute_dataset(mnist.train_dataset(
            data.train, config.batch_size, config.seed, first_epoch=epoch, skip_batches=done)))

    step = restore()
    if chief and not os.path.exists(flags_path):
        run_files.write_flags(run_dir, config.flagfile())
    writer = MetricsWriter(run_dir, is_chief=chief)
    writer.write_text(step, {"config/flags": "```\n" + config.flagfile() + "```"})

    # Train loop: compiled runs of up to steps_per_loop steps, cut at epoch ends and
    # checkpoint steps; between them, Python logs, evaluates, checkpoints and checks for
    # SIGTERM and divergence.
    total_steps = steps_per_epoch * config.epochs
    retries_left = config.nonfinite_retries
    train_iterator = batches_from(step)
    progress = Progress(step, total_steps, steps_per_epoch, enabled=chief)
    profile = ProfileWindow(run_dir, config.profile_steps if chief else None)
    histogram_every = config.histogram_every_steps or steps_per_epoch
    tf.summary.trace_on(graph=True)  # The first call's trace goes to the Graphs tab.
    with preemption.watch(strategy, checkpoints.write_manager) as sigterm:
        while step < total_steps and not sigterm.requested:
            num_steps = min(config.steps_per_loop, steps_per_epoch - step % steps_per_epoch)
            if config.checkpoint_every_steps:
                num_steps = min(num_steps, config.checkpoint_every_steps
                                - step % config.checkpoint_every_steps)
            profile.at(step)
            train_metrics.reset()
            loop_start = time.perf_counter()
            learning_rate = float(optimizer.current_learning_rate())
            train_loop(train_iterator, tf.constant(num_steps))
            train = train_metrics.result()  # Waits for the steps to finish.
            examples_per_sec = num_steps * config.batch_size / (time.perf_counter() - loop_start)
            writer.write_graph_trace(step, "train_loop")

            bad_step = int(optimizer.first_nonfinite_step.numpy())
            if bad_step or not math.isfinite(train["loss"]):
                # Nothing from this run of steps is saved: the last good checkpoint stays.
                problem = (f"step {bad_step or step + num_steps}: the loss or a gradient is "
                           f"not finite (train loss {train['loss']})")
                if not retries_left or not checkpoints.latest:
                    raise DivergenceError(f"{problem}; stopping. The latest checkpoint, "
                                          f"{checkpoints.latest}, holds no NaN.")
                retries_left -= 1
                logging.warning("%s; restoring the last good checkpoint (%d retries left)",
                                problem, retries_left)
                step = restore()
                train_iterator = batches_from(step)
                continue

            step += num_steps
            writer.write_scalars(step, {
                "train/loss": train["loss"], "train/accuracy": train["accuracy"],
                "optim/learning_rate": learning_rate,
                "optim/grad_norm": float(optimizer.grad_norm.numpy()),
                "optim/param_norm": float(tf.linalg.global_norm(model.trainable_variables)),
                "perf/examples_per_sec": examples_per_sec})
            progress.update(step, train, examples_per_sec)
            if step % histogram_every == 0:
                writer.write_histograms(step, state_histograms(model, optimizer))
            epoch_end = step % steps_per_epoch == 0
            if epoch_end:
                validation = evaluate(eval_loop, eval_metrics, eval_datasets["validation"],
                                      eval_batches["validation"])
                writer.write_scalars(step, {"eval/loss": validation["loss"],
                                            "eval/accuracy": validation["accuracy"]})
                if chief:
                    grid = misclassified_grid(model, data.validation)
                    if grid is not None:
                        writer.write_images(step, {"eval/misclassified": grid})
                progress.end_epoch(step, train, examples_per_sec, validation)
            if (epoch_end or sigterm.requested or (config.checkpoint_every_steps and
                                                   step % config.checkpoint_every_steps == 0)):
                logging.info("saved %s", checkpoints.save(step))
                writer.flush()
            sigterm.save_if_preempted(step)  # Across workers: saves and raises Preempted.
    profile.stop()
    tf.summary.trace_off()
    if sigterm.requested and step < total_steps:
        writer.close()
        raise preemption.Preempted(f"SIGTERM: stopped at step {step} of {total_steps} with a "
                                   "checkpoint saved; rerun the same command to resume")

    # Final test score and export.
    test = evaluate(eval_loop, eval_metrics, eval_datasets["test"], eval_batches["test"])
    writer.write_scalars(step, {"test/loss": test["loss"], "test/accuracy": test["accuracy"]})
    writer.close()
    # Every worker holds the same weights; this line lets a person (and a test) check it.
    logging.info("weights fingerprint at step %d: %s", step, weights_fingerprint(model))
    export_dir = os.path.join(run_dir, EXPORT_DIR, str(step))
    result = TrainResult(run_dir=run_dir, steps=step, test_accuracy=test["accuracy"],
                         test_loss=test["loss"], export_dir=export_dir)
    if not chief:
        return result
    if os.path.exists(export_dir):
        logging.info("export for step %d already in %s; kept as it is", step, export_dir)
    else:
        export(model, export_dir)
        logging.info("exported SavedModel to %s", export_dir)
    run_files.write_result(run_dir, result)
    return result
