"""One train state: the model, its optimizer, the metrics and the compiled loops.

`build_train_state` is the one place they are put together, under the strategy's scope. The
trainer, the benchmark and the tests all build it here, so what is benchmarked and tested is
exactly what trains.
"""

import dataclasses
import hashlib
import math
import time

import tensorflow as tf

from data import mnist
from models.mlp import MLP
from trainer import optimizers
from trainer.choices import AVERAGING_OPTIMIZERS
from trainer.common.errors import OneLineError
from trainer.config import ConfigError, TrainConfig
from trainer.step.machine_fit import uses_xla
from trainer.step.metrics import ClassificationMetrics
from trainer.step.steps import compile_loop, fits_one_program, make_eval_step, make_train_step

# What each --precision computes in; variables and optimizer state are float32 in all three.
COMPUTE_DTYPES = {"float32": tf.float32, "mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}


class DivergenceError(OneLineError):
    """The loss or a gradient stopped being finite at `step`; nothing of the compiled run of
    steps that met it is saved. The recipe retries past it, then reports it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optimizers.LearningRate:
    """The config's schedule, with its epochs turned into steps."""
    return optimizers.create_schedule(
        config.lr_schedule,
        config.learning_rate,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=int(config.warmup_epochs * steps_per_epoch),
    )


def check_optimizer(config: TrainConfig) -> None:
    """Raises ConfigError for what only the optimizer knows of its settings (that Lion's beta_1
    may not be 0); TrainConfig.validate checked the rest, without TensorFlow."""
    try:
        optimizers.create(config.optimizer, config.learning_rate, **config.optimizer_settings())
    except ValueError as e:
        problem = str(e).removeprefix(f"{config.optimizer}: ")
        raise ConfigError(f"--optimizer={config.optimizer}: {problem}") from None


def optimizer_for(
    config: TrainConfig,
    model: MLP,
    steps_per_epoch: int,
    averages: list[tf.Variable] | None = None,
) -> optimizers.Optimizer:
    """The config's optimizer with its settings, transforms and (mixed_float16) loss scaling;
    `averages`: where the weight EMA keeps its averages (with --ema_decay), or Schedule-Free
    its x. Weight decay never touches biases."""
    settings = config.optimizer_settings()
    if "weight_decay" in optimizers.options(config.optimizer):
        settings["decays"] = optimizers.is_weight_matrix
    if config.optimizer == "muon":  # Which layers take AdamW: by default the output layer.
        excluded = config.exclude_layers or (model.layers[-1].name,)
        settings["exclude_layers"] = [f"(^|/){name}/" for name in excluded]
    learning_rate = learning_rate_schedule(config, steps_per_epoch)
    if "warmup_steps" in optimizers.options(config.optimizer):  # Its own warm-up, no schedule.
        learning_rate = config.learning_rate
        settings["warmup_steps"] = int(config.warmup_epochs * steps_per_epoch)
    if config.optimizer in AVERAGING_OPTIMIZERS:  # Schedule-Free's x.
        settings["averages"] = averages
    transforms = []
    if config.clip_global_norm:
        transforms.append(optimizers.ClipByGlobalNorm(config.clip_global_norm))
    if config.ema_decay:
        transforms.append(optimizers.WeightEMA(config.ema_decay, averages))
    loss_scaling = config.precision == "mixed_float16" and optimizers.DynamicLossScale(
        config.initial_loss_scale, config.loss_scale_growth_interval
    )
    return optimizers.create(
        config.optimizer,
        learning_rate,
        xla_update=config.xla_update,
        loss_scaling=loss_scaling,
        transforms=transforms,
        **settings,
    )


@dataclasses.dataclass
class TrainState:
    model: MLP
    optimizer: optimizers.Optimizer
    train_metrics: ClassificationMetrics
    eval_metrics: ClassificationMetrics
    train_loop: tf.types.experimental.PolymorphicFunction  # (iterator, num_steps)
    eval_loop: tf.types.experimental.PolymorphicFunction  # (iterator, num_batches)
    global_batch_size: int
    # With --ema_decay: a second model whose weights are the averages, and its eval loop;
    # with schedule_free_adamw, x is its weights.
    ema_model: MLP | None
    ema_eval_loop: tf.types.experimental.PolymorphicFunction | None
    # [first step, last step] of each window of steps whose batches were skipped because
    # training diverged on them (Resumable.recover); checkpointed, so a resumed run skips them.
    skipped_windows: tf.Variable  # int64 [windows, 2]

    @property
    def final_model(self) -> MLP:
        """What is validated, tested and exported: the averaged weights, with an EMA (or
        Schedule-Free's x)."""
        return self.ema_model or self.model

    @property
    def step(self) -> int:
        """The steps taken: the run's step, which numbers its checkpoints. With loss scaling
        it counts the steps skipped for an overflow, each of which took its batch too."""
        return int(self.optimizer.steps_taken.numpy())

    def weights_fingerprint(self) -> str:
        """SHA-256 of every weight's bytes: equal on two workers iff their weights are equal."""
        digest = hashlib.sha256()
        for variable in self.model.trainable_variables:
            digest.update(variable.numpy().tobytes())
        return digest.hexdigest()[:16]

    @property
    def data_position(self) -> int:
        """The training batch the next step takes: one a step taken, past the windows skipped."""
        windows = self.skipped_windows.numpy()
        return self.step + int((windows[:, 1] - windows[:, 0] + 1).sum())

    def skip_window(self, first_step: int, last_step: int) -> None:
        """From now on, steps take the batches after those steps first..last would have."""
        self.skipped_windows.assign(
            tf.concat(
                [self.skipped_windows, tf.constant([[first_step, last_step]], tf.int64)], axis=0
            )
        )

    def checkpoint(self) -> tf.train.Checkpoint:
        """What a checkpoint holds: the weights, all optimizer state (step counter included)
        and where the data stands."""
        return tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, skipped_windows=self.skipped_windows
        )

    def train(self, iterator, num_steps: int) -> dict[str, float]:
        """Runs `num_steps` compiled steps and returns what they measured.

        {loss, accuracy} over the steps; the learning rate they started with; the last step's
        gradient norm and the parameter norm after it; examples per second; with loss scaling,
        the loss scale and the steps skipped for an overflow so far; with clipping, the
        fraction of these steps that were clipped. Raises DivergenceError if
        any step's loss was not finite, or a gradient was not finite (with loss scaling: even
        at loss scale 1).
        """
        first_step = self.step
        clipping = self._clipping()
        clipped_before = int(clipping.clipped_steps.numpy()) if clipping else 0
        learning_rate = float(self.optimizer.current_learning_rate())
        self.train_metrics.reset()
        start = time.perf_counter()
        self.train_loop(iterator, tf.constant(num_steps))
        measured = self.train_metrics.result()  # Waits for the steps to finish.
        seconds = time.perf_counter() - start
        bad_step = int(self.optimizer.first_nonfinite_step.numpy())
        if bad_step or not math.isfinite(measured["loss"]):
            step = bad_step or first_step + num_steps
            raise DivergenceError(
                f"step {step}: the loss or a gradient is not finite "
                f"(train loss {measured['loss']})",
                step,
            )
        measured.update(
            learning_rate=learning_rate,
            grad_norm=float(self.optimizer.grad_norm.numpy()),
            param_norm=float(tf.linalg.global_norm(self.model.trainable_variables)),
            examples_per_sec=num_steps * self.global_batch_size / seconds,
        )
        if self.optimizer.loss_scaling:
            measured.update(
                loss_scale=float(self.optimizer.loss_scale.numpy()),
                skipped_steps=int(self.optimizer.skipped_steps.numpy()),
            )
        if clipping:
            clipped = int(clipping.clipped_steps.numpy()) - clipped_before
            measured.update(clip_rate=clipped / num_steps)
        return measured

    def _clipping(self) -> optimizers.ClipByGlobalNorm | None:
        found = [t for t in self.optimizer.transforms if isinstance(t, optimizers.ClipByGlobalNorm)]
        return found[0] if found else None

    def evaluate(self, dataset, num_batches: int, averaged: bool = False) -> dict[str, float]:
        """{loss, accuracy} over a padded eval dataset (see mnist.eval_dataset), of the
        weights or (`averaged`, with an EMA) of their averages."""
        self.eval_metrics.reset()
        loop = self.ema_eval_loop if averaged else self.eval_loop
        loop(iter(dataset), tf.constant(num_batches))
        return self.eval_metrics.result()


def build_train_state(
    strategy: tf.distribute.Strategy,
    config: TrainConfig,
    steps_per_epoch: int,
    optimizer: optimizers.Optimizer | None = None,
    one_program: bool | None = None,
) -> TrainState:
    """Model, optimizer (config.optimizer, or the one given), metrics and compiled loops.

    Every variable, optimizer state included, is created under the strategy's scope, so each
    is mirrored across its replicas. `one_program`: whether XLA compiles the whole step as one
    program; by default wherever it can (steps.fits_one_program); False compiles it in pieces
    as several replicas do, which the bench and the tests compare it with.
    """
    if config.precision == "mixed_float16" and all(
        "CPU" in device for device in strategy.extended.worker_devices
    ):
        # On CPUs, TF 2.21 runs the float16 MatMul+BiasAdd that grappler's remapper fuses some
        # 500x slower than the two ops unfused (0.5 s against 0.6 ms, forward and backward of
        # a 500x784x64 layer): the remapper is off for float16 on CPUs (process-wide).
        tf.config.optimizer.set_experimental_options({"remapping": False})

    def new_model():  # The same seed, so an EMA starts at the initial weights.
        return MLP(
            mnist.NUM_PIXELS,
            config.hidden_sizes,
            mnist.NUM_CLASSES,
            seed=config.seed,
            compute_dtype=COMPUTE_DTYPES[config.precision],
        )

    with strategy.scope():
        model = new_model()
        averaged = config.ema_decay or config.optimizer in AVERAGING_OPTIMIZERS
        ema_model = new_model() if averaged else None
        averages = ema_model.trainable_variables if ema_model else None
        optimizer = optimizer or optimizer_for(config, model, steps_per_epoch, averages)
        optimizer.build(model.trainable_variables)
        train_metrics = ClassificationMetrics("train_metrics")
        eval_metrics = ClassificationMetrics("eval_metrics")
    xla = uses_xla(config.jit_compile)
    if one_program is None:
        one_program = fits_one_program(strategy, xla, config.xla_update)
    return TrainState(
        model=model,
        optimizer=optimizer,
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        train_loop=compile_loop(
            strategy,
            make_train_step(
                model,
                optimizer,
                train_metrics,
                config.batch_size,
                xla,
                config.grad_accum_steps,
                config.sam_rho,
                config.sam_mode,
                one_program=one_program,
            ),
        ),
        eval_loop=compile_loop(strategy, make_eval_step(model, eval_metrics)),
        global_batch_size=config.batch_size,
        ema_model=ema_model,
        ema_eval_loop=ema_model and compile_loop(strategy, make_eval_step(ema_model, eval_metrics)),
        # Bookkeeping of the input, not replica state: outside the strategy's scope.
        skipped_windows=tf.Variable(
            tf.zeros([0, 2], tf.int64),
            shape=tf.TensorShape([None, 2]),
            trainable=False,
            name="skipped_windows",
        ),
    )
