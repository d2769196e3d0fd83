"""The trainer's settings as plain data, checked before any work starts.

Only the entry point reads flags; it builds a TrainConfig and the library takes it from there,
so tests and sweeps call the very same code with a config of their own.
"""

import dataclasses
import math
import os
import re
from collections.abc import Sequence

from data.mnist import SOURCES
from trainer.common.errors import OneLineError
from trainer.distribution.strategies import STRATEGIES
from trainer.optimizers import OPTIMIZERS, SCHEDULES

# Keras's policy names. Mixed: float32 variables and optimizer state, compute in the other dtype.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
_PRECISION_SUFFIX = {"float32": "", "mixed_bfloat16": "_bf16", "mixed_float16": "_fp16"}


# The settings that decide what a run computes. A run directory belongs to one set of them:
# resuming it with others would silently mix two experiments. The rest (devices, logging
# cadence, where data comes from) may change between a run and its resumption.
RESULT_FIELDS = (
    "optimizer",
    "learning_rate",
    "lr_schedule",
    "warmup_epochs",
    "batch_size",
    "epochs",
    "hidden_sizes",
    "seed",
    "precision",
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
    learning_rate: float = setting(2e-3, "Peak learning rate.")
    lr_schedule: str = setting("cosine", "constant, or cosine decay to 0 over the run.", SCHEDULES)
    warmup_epochs: float = setting(1.0, "Linear warm-up before the cosine decay, in epochs.")
    batch_size: int = setting(128, "Global batch size, split evenly across replicas.")
    epochs: int = setting(10, "Passes over the 50,000 training images.")
    hidden_sizes: tuple[int, ...] = setting((700, 500), "Widths of the hidden layers.")
    seed: int = setting(0, "Seeds weights and data order.")
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
    jit_compile: bool = setting(
        False,
        "Compile each replica's forward and backward pass with XLA, as Keras's jit_compile "
        "does (pays on GPUs; slower on some CPUs, see docs/performance.md).",
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
        need(self.lr_schedule in SCHEDULES, "lr_schedule", f"must be one of {', '.join(SCHEDULES)}")
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
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
        need(self.steps_per_loop >= 1, "steps_per_loop", "must be at least 1")
        need(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        need(self.data_source in SOURCES, "data_source", f"must be one of {', '.join(SOURCES)}")
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

    def run_dir_name(self) -> str:
        """The run's directory under logdir: the same settings resume the same run."""
        if self.run_name:
            return self.run_name
        hidden = "x".join(map(str, self.hidden_sizes))
        warmup = f"_w{self.warmup_epochs:g}" if self.warmup_epochs else ""
        return (
            f"mlp{hidden}_{self.optimizer}_lr{self.learning_rate:g}_{self.lr_schedule}"
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
        started = dict(
            line[2:].split("=", 1)
            for line in flagfile_text.splitlines()
            if line.startswith("--") and "=" in line
        )
        for name, value in self.as_flags(RESULT_FIELDS).items():
            if name in started and not _same_value(started[name], value):
                raise ConfigError(
                    f"--{name}={value}: the run in {os.path.dirname(path)} was started with "
                    f"--{name}={started[name]} ({path}); resume it with the same settings or "
                    "choose another --run_name or --logdir"
                )


def check_batch_split(batch_size: int, replicas: int) -> None:
    """Raises ConfigError unless the global batch splits evenly among `replicas` in sync; the
    trainer checks it once its strategy is up, a launcher before it starts any replica."""
    if batch_size % replicas:
        raise ConfigError(
            f"--batch_size={batch_size}: must be divisible by the {replicas} replicas in sync"
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
