"""The trainer's settings as plain data, checked before any work starts.

Only the entry point reads flags; it builds a TrainConfig and the library takes it from there,
so tests and sweeps call the very same code with a config of their own. It imports no
TensorFlow (the choices come from trainer/choices.py), so a bad flag is refused at once; what
only a built optimizer can tell is checked where TensorFlow is loaded
(`trainer.step.state.check_optimizer`).
"""

import dataclasses
import math
import os
import re
from collections.abc import Sequence

from data import SOURCES
from trainer.choices import (
    AVERAGING_OPTIMIZERS,
    INITIAL_LOSS_SCALE,
    JIT_COMPILE_CHOICES,
    LOSS_SCALE_GROWTH_INTERVAL,
    MUON_SCALES,
    OPTIMIZER_SETTINGS,
    OPTIMIZERS,
    PRECISIONS,
    SAM_MODES,
    SCHEDULES,
    STRATEGIES,
)
from trainer.common.errors import OneLineError

_PRECISION_SUFFIX = {"float32": "", "mixed_bfloat16": "_bf16", "mixed_float16": "_fp16"}

# The tags in a run's directory name of the settings that are not at their defaults. The
# optimizer's settings (OPTIMIZER_SETTINGS) are unset (None) by default: the optimizer's own.
_NAME_TAGS = {
    "weight_decay": "wd",
    "beta_1": "b1_",
    "beta_2": "b2_",
    "momentum": "m",
    "exclude_layers": "ex_",
    "muon_scale": "",
    "clip_global_norm": "clip",
    "sam_rho": "sam",
    "sam_mode": "",
    "ema_decay": "ema",
    "label_noise": "noise",
    "initial_loss_scale": "ls",
    "loss_scale_growth_interval": "lsgrow",
}

# The settings that decide what a run computes. A run directory belongs to one set of them:
# resuming it with others would silently mix two experiments. The rest (devices, logging
# cadence, where data comes from) may change between a run and its resumption.
RESULT_FIELDS = (
    "optimizer",
    *OPTIMIZER_SETTINGS,
    "clip_global_norm",
    "sam_rho",
    "sam_mode",
    "ema_decay",
    "learning_rate",
    "lr_schedule",
    "warmup_epochs",
    "batch_size",
    "epochs",
    "hidden_sizes",
    "seed",
    "label_noise",
    "precision",
    "initial_loss_scale",
    "loss_scale_growth_interval",
)


class ConfigError(OneLineError):
    """A setting that cannot work; the message names the flag and what is wrong with it."""


def setting(default, help: str, choices: Sequence[str] | None = None):
    """A TrainConfig field: its default, and the help and allowed values of its flag (the flag
    of the same name, defined from this by trainer/flags.py)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    logdir: str = setting("runs", "Parent directory of all runs.")
    run_name: str = setting(
        "", "Run directory under --logdir; empty derives it from the hyperparameters."
    )
    strategy: str = setting(
        "auto",
        "auto: MirroredStrategy over every GPU, or over --cpu_replicas CPU devices when more "
        "than one, else a single device.",
        STRATEGIES,
    )
    cpu_replicas: int = setting(
        1, "Split the CPU into this many logical devices (machines without GPUs)."
    )
    optimizer: str = setting("adam", "Optimizer.", tuple(OPTIMIZERS))
    weight_decay: float | None = setting(
        None,
        "adamw, lion, muon, nadamw, adafactor, schedule_free_adamw: decoupled weight decay, w -= "
        "lr_t * weight_decay * w each step, of the weight matrices (never biases); lamb: "
        "weight_decay * w inside its trust ratio; unset: the optimizer's default (0.004; lion, "
        "lamb, adafactor, schedule_free_adamw 0).",
    )
    beta_1: float | None = setting(
        None,
        "adam, adamw, lion, nadamw, lamb, schedule_free_adamw: beta_1; unset: the optimizer's "
        "default (0.9).",
    )
    beta_2: float | None = setting(
        None,
        "adam, adamw, lion, nadamw, lamb, schedule_free_adamw: beta_2; unset: the optimizer's "
        "default (0.999; lion 0.99).",
    )
    momentum: float | None = setting(
        None, "momentum, muon: the momentum; unset: the optimizer's default (0.7; muon 0.95)."
    )
    exclude_layers: tuple[str, ...] | None = setting(
        None,
        "muon: the layers that take AdamW instead of Muon's rule, by name (dense_0, dense_1, "
        "...; the last is the output layer); unset: the output layer, as Keras advises.",
    )
    muon_scale: str | None = setting(
        None,
        "muon: the factor on each orthogonalized update: moonlight, 0.2 * sqrt(max(in, out)), "
        "to share AdamW's learning rate and decay; spectral, sqrt(max(1, out / in)), Muon's "
        "author's, for his rates (~0.02); unset: moonlight, as Keras.",
        MUON_SCALES,
    )
    clip_global_norm: float = setting(
        0.0,
        "Clip the gradients summed across replicas and workers to this global norm before "
        "each update; 0: no clipping.",
    )
    sam_rho: float = setting(
        0.0,
        "Sharpness-aware minimization: take each update's gradient at w + rho * g / ||g||; 0: off.",
    )
    sam_mode: str = setting(
        "global",
        "With --sam_rho: global (one perturbation from the whole batch's gradient, as on one "
        "device) or per_replica (each replica's own: m-sharpness).",
        SAM_MODES,
    )
    ema_decay: float = setting(
        0.0,
        "Keep an exponential moving average of the weights with this decay; validation, the "
        "test score and the export use it. 0: none.",
    )
    learning_rate: float = setting(2e-3, "Peak learning rate.")
    lr_schedule: str = setting("cosine", "constant, or cosine decay to 0 over the run.", SCHEDULES)
    warmup_epochs: float = setting(1.0, "Linear warm-up before the cosine decay, in epochs.")
    batch_size: int = setting(128, "Global batch size, split evenly across replicas.")
    grad_accum_steps: int = setting(
        1,
        "Split each replica's share of a batch into this many micro-batches, summing their "
        "gradients before the one update: the same steps in less memory.",
    )
    epochs: int = setting(10, "Passes over the 50,000 training images.")
    hidden_sizes: tuple[int, ...] = setting((700, 500), "Widths of the hidden layers.")
    seed: int = setting(0, "Seeds weights and data order.")
    label_noise: float = setting(
        0.0,
        "Replace this fraction of the training labels (picked by --seed) by another class; "
        "validation and test labels stay clean. For studying robustness to noisy labels.",
    )
    steps_per_loop: int = setting(
        100, "Train steps per call of the compiled loop (and per logged point)."
    )
    data_source: str = setting(
        "auto", "auto: TFDS if MNIST is prepared in --data_dir, else the bundled copy.", SOURCES
    )
    data_dir: str | None = setting(None, "TFDS data directory (TFDS default if unset).")
    max_checkpoints: int = setting(3, "Checkpoints kept.")
    checkpoint_every_steps: int = setting(
        0, "Also checkpoint every this many steps; 0: at epoch ends only."
    )
    deterministic: bool = setting(
        False,
        "Turn on TensorFlow op determinism: a rerun, or a killed and resumed run, gives "
        "bit-for-bit the same weights (slower on GPUs).",
    )
    xla_update: bool = setting(
        True,
        "Compile each variable's optimizer update with XLA into one fused pass (faster); "
        "--noxla_update runs it op by op, e.g. where XLA cannot compile for the device.",
    )
    precision: str = setting(
        "float32",
        "float32; or mixed precision (Keras's policy names): float32 weights and optimizer "
        "state, forward and backward passes in bfloat16 or float16 (float16 with dynamic loss "
        "scaling).",
        PRECISIONS,
    )
    initial_loss_scale: float = setting(
        INITIAL_LOSS_SCALE,
        "mixed_float16: the loss scale to start from (PyTorch's init_scale, Keras's "
        "initial_scale); it halves on every overflow and doubles after "
        "--loss_scale_growth_interval finite steps in a row.",
    )
    loss_scale_growth_interval: int = setting(
        LOSS_SCALE_GROWTH_INTERVAL,
        "mixed_float16: double the loss scale after this many finite steps in a row "
        "(PyTorch's growth_interval, Keras's dynamic_growth_steps).",
    )
    jit_compile: str = setting(
        "auto",
        "Compile the step with XLA: on one replica the whole step as one program (forward, "
        "backward and the optimizer's update, as Keras's jit_compile fit), on several each "
        "replica's forward and backward pass; true, false, or auto: chosen from the machine "
        "(XLA on GPUs and on CPUs without oneDNN's fused kernels, such as AVX2-only ones; see "
        "docs/performance.md), logged, and kept in flags.txt for a resumption.",
        JIT_COMPILE_CHOICES,
    )
    nonfinite_retries: int = setting(
        0,
        "On a NaN/inf loss or gradient, restore the last good checkpoint and go on, up to this "
        "many times; 0: stop with an error.",
    )
    histogram_every_steps: int = setting(
        0, "Histograms of weights and optimizer state every this many steps; 0: at epoch ends."
    )
    profile_steps: tuple[int, ...] = setting(
        (),
        "START,END: record a profiler trace of these steps (TensorBoard's Profile tab); "
        "empty: no trace.",
    )

    def validate(self) -> "TrainConfig":
        """Raises ConfigError naming the first bad flag; returns self for chaining."""

        def need(ok, flag, problem):
            if not ok:
                raise ConfigError(f"--{flag}={_flag_value(getattr(self, flag))}: {problem}")

        need(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}")
        need(self.cpu_replicas >= 1, "cpu_replicas", "must be at least 1")
        need(
            self.cpu_replicas == 1 or self.strategy in ("auto", "mirrored"),
            "cpu_replicas",
            f"--strategy={self.strategy} trains on one device (multi_worker: one per worker); "
            "--strategy=mirrored or auto splits the CPU",
        )
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        need(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            "learning_rate",
            "must be a positive number",
        )
        self._validate_optimizer_settings(need)
        need(self.lr_schedule in SCHEDULES, "lr_schedule", f"must be one of {', '.join(SCHEDULES)}")
        need(
            self.optimizer not in AVERAGING_OPTIMIZERS or self.lr_schedule == "constant",
            "lr_schedule",
            f"--optimizer={self.optimizer} takes no decay: its average of the weights replaces "
            "it; use --lr_schedule=constant (its warm-up is --warmup_epochs)",
        )
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
        need(self.grad_accum_steps >= 1, "grad_accum_steps", "must be at least 1")
        need(self.epochs >= 1, "epochs", "must be at least 1")
        need(
            self.warmup_epochs >= 0 and self.warmup_epochs < self.epochs,
            "warmup_epochs",
            "must be at least 0 and less than --epochs",
        )
        need(
            len(self.hidden_sizes) > 0 and min(self.hidden_sizes) >= 1,
            "hidden_sizes",
            "must be a comma-separated list of positive layer widths, e.g. 700,500",
        )
        need(0 <= self.label_noise < 1, "label_noise", "must be a fraction at least 0, below 1")
        need(self.steps_per_loop >= 1, "steps_per_loop", "must be at least 1")
        need(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        self._validate_loss_scaling(need)
        need(self.data_source in SOURCES, "data_source", f"must be one of {', '.join(SOURCES)}")
        need(
            self.jit_compile in JIT_COMPILE_CHOICES,
            "jit_compile",
            f"must be one of {', '.join(JIT_COMPILE_CHOICES)}",
        )
        need(self.max_checkpoints >= 1, "max_checkpoints", "must be at least 1")
        need(
            self.checkpoint_every_steps >= 0,
            "checkpoint_every_steps",
            "must be 0 (epoch ends only) or a positive number of steps",
        )
        need(self.nonfinite_retries >= 0, "nonfinite_retries", "must be 0 or more")
        need(
            self.histogram_every_steps >= 0,
            "histogram_every_steps",
            "must be 0 (epoch ends) or a positive number of steps",
        )
        need(
            not self.profile_steps
            or (
                len(self.profile_steps) == 2 and 0 <= self.profile_steps[0] < self.profile_steps[1]
            ),
            "profile_steps",
            "must be START,END with 0 <= START < END, e.g. 100,120",
        )
        need(
            re.fullmatch(r"[\w.@=,+-]*", self.run_name) is not None,
            "run_name",
            "may hold only letters, digits and . @ = , + - _ (it names a directory)",
        )
        return self

    def _validate_optimizer_settings(self, need) -> None:
        for name in OPTIMIZER_SETTINGS:
            if getattr(self, name) is not None:
                takers = [o for o in OPTIMIZERS if name in OPTIMIZERS[o]]
                need(
                    name in OPTIMIZERS[self.optimizer],
                    name,
                    f"--optimizer={self.optimizer} takes no {name}; "
                    f"{', '.join(takers) or 'no optimizer'} {'does' if len(takers) == 1 else 'do'}",
                )
        for name in ("beta_1", "beta_2", "momentum"):
            value = getattr(self, name)
            need(value is None or 0 <= value < 1, name, "must be at least 0 and less than 1")
        need(
            self.weight_decay is None or 0 <= self.weight_decay < math.inf,
            "weight_decay",
            "must be 0 or a positive number",
        )
        layers = [f"dense_{i}" for i in range(len(self.hidden_sizes) + 1)]
        need(
            self.exclude_layers is None or set(self.exclude_layers) <= set(layers),
            "exclude_layers",
            f"must name layers of the model: {', '.join(layers)}",
        )
        need(
            self.muon_scale is None or self.muon_scale in MUON_SCALES,
            "muon_scale",
            f"must be one of {', '.join(MUON_SCALES)}",
        )
        need(
            math.isfinite(self.clip_global_norm) and self.clip_global_norm >= 0,
            "clip_global_norm",
            "must be 0 (no clipping) or a positive norm",
        )
        need(
            math.isfinite(self.sam_rho) and self.sam_rho >= 0,
            "sam_rho",
            "must be 0 (no SAM) or a positive radius, e.g. 0.05",
        )
        need(self.sam_mode in SAM_MODES, "sam_mode", f"must be one of {', '.join(SAM_MODES)}")
        need(
            self.sam_rho > 0 or self.sam_mode == "global",
            "sam_mode",
            "chooses how SAM perturbs: set --sam_rho too",
        )
        need(
            0 <= self.ema_decay < 1,
            "ema_decay",
            "must be 0 (no average) or a decay in (0, 1), e.g. 0.999",
        )
        need(
            self.optimizer not in AVERAGING_OPTIMIZERS or not self.ema_decay,
            "ema_decay",
            f"--optimizer={self.optimizer} already validates, tests and exports an average of "
            "the weights (x); set no --ema_decay",
        )

    def _validate_loss_scaling(self, need) -> None:
        need(
            math.isfinite(self.initial_loss_scale) and self.initial_loss_scale > 0,
            "initial_loss_scale",
            "must be a positive, finite scale, e.g. 65536",
        )
        need(
            self.loss_scale_growth_interval >= 1,
            "loss_scale_growth_interval",
            "must be at least 1",
        )
        for name, default in (
            ("initial_loss_scale", INITIAL_LOSS_SCALE),
            ("loss_scale_growth_interval", LOSS_SCALE_GROWTH_INTERVAL),
        ):
            need(
                self.precision == "mixed_float16" or getattr(self, name) == default,
                name,
                "only --precision=mixed_float16 scales the loss "
                f"(not --precision={self.precision})",
            )

    def optimizer_settings(self) -> dict:
        """The optimizer's keyword settings that are set, as its constructor takes them."""
        settings = {name: getattr(self, name) for name in OPTIMIZER_SETTINGS}
        return {name: value for name, value in settings.items() if value is not None}

    def run_dir(self) -> str:
        """The run's directory: `run_dir_name()` under logdir."""
        return os.path.join(self.logdir, self.run_dir_name())

    def run_dir_name(self) -> str:
        """The run's directory under logdir: the same settings resume the same run."""
        if self.run_name:
            return self.run_name
        hidden = "x".join(map(str, self.hidden_sizes))
        warmup = f"_w{self.warmup_epochs:g}" if self.warmup_epochs else ""
        defaults = {field.name: field.default for field in dataclasses.fields(self)}
        settings = "".join(
            f"_{tag}{_flag_value(getattr(self, name)).replace(',', '+')}"
            for name, tag in _NAME_TAGS.items()
            if getattr(self, name) != defaults[name]
        )
        return (
            f"mlp{hidden}_{self.optimizer}{settings}_lr{self.learning_rate:g}_{self.lr_schedule}"
            f"{warmup}_b{self.batch_size}_e{self.epochs}_s{self.seed}"
            f"{_PRECISION_SUFFIX[self.precision]}"
        )

    def as_flags(self, fields=None) -> dict[str, str]:
        """{flag name: value as typed on a command line}, for every field or those given."""
        names = fields or [field.name for field in dataclasses.fields(self)]
        return {
            name: _flag_value(getattr(self, name))
            for name in names
            if getattr(self, name) is not None
        }

    def flagfile(self) -> str:
        """The config as an absl flagfile: `--flagfile=<it>` reruns the same config."""
        return "".join(f"--{name}={value}\n" for name, value in self.as_flags().items())

    def check_resumable(self, flagfile_text: str, path: str) -> None:
        """Raises ConfigError if a run started with `flagfile_text` computes something else."""
        started = flagfile_values(flagfile_text)
        current = self.as_flags(RESULT_FIELDS)
        for name in RESULT_FIELDS:
            value = current.get(name, "unset")
            if name in started and not _same_value(started[name], value):
                raise ConfigError(
                    f"--{name}={value}: the run in {os.path.dirname(path)} was started with "
                    f"--{name}={started[name]} ({path}); resume it with the same settings or "
                    "choose another --run_name or --logdir"
                )


def flagfile_values(flagfile_text: str) -> dict[str, str]:
    """{flag name: value} of the `--name=value` lines of a flagfile (flags.txt)."""
    return dict(
        line[2:].split("=", 1)
        for line in flagfile_text.splitlines()
        if line.startswith("--") and "=" in line
    )


def check_batch_split(batch_size: int, replicas: int, grad_accum_steps: int = 1) -> None:
    """Raises ConfigError unless the global batch splits evenly among `replicas` in sync, and
    each replica's share into `grad_accum_steps` micro-batches; the trainer checks it once its
    strategy is up, a launcher before it starts any replica."""
    if batch_size % replicas:
        raise ConfigError(
            f"--batch_size={batch_size}: must be divisible by the {replicas} replicas in sync"
        )
    if batch_size % (replicas * grad_accum_steps):
        raise ConfigError(
            f"--batch_size={batch_size}: must be divisible by the {replicas} replicas in sync "
            f"times --grad_accum_steps={grad_accum_steps}"
        )


def _same_value(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def _flag_value(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)
