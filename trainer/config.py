"""The trainer's settings as plain data, checked before any work starts.

Only the entry point reads flags; it builds a TrainConfig and the library takes it from there,
so tests and sweeps call the very same code with a config of their own.
"""

import dataclasses
import math
import os
import re

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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    logdir: str = "runs"
    run_name: str = ""  # Empty: derived from the hyperparameters (see run_dir_name).
    strategy: str = "auto"
    cpu_replicas: int = 1
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_epochs: float = 1.0
    batch_size: int = 128  # Global: split evenly across replicas.
    epochs: int = 10
    hidden_sizes: tuple[int, ...] = (700, 500)
    seed: int = 0
    steps_per_loop: int = 100
    data_source: str = "auto"
    data_dir: str | None = None
    max_checkpoints: int = 3
    checkpoint_every_steps: int = 0  # 0: at epoch ends only.
    deterministic: bool = False
    xla_update: bool = True  # False: the optimizer's update runs op by op.
    precision: str = "float32"  # Or mixed_bfloat16, mixed_float16 (with loss scaling).
    jit_compile: bool = False  # XLA-compile each replica's forward and backward pass.
    nonfinite_retries: int = 0  # Restores of the last good checkpoint before giving up.
    histogram_every_steps: int = 0  # 0: at epoch ends.
    profile_steps: tuple[int, ...] = ()  # (start, end): profile those steps.

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


def _same_value(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def _flag_value(value) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)
