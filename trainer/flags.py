"""The trainer's flags: defined on any FlagValues, read back as one TrainConfig.

`trainer/train.py` defines them on absl's global FLAGS; launchers define them on a private
FlagValues to check the flags they pass through with the trainer's own parsing and validation
(launch/trainer_args.py), so a launcher refuses exactly what the trainer would.
"""

import dataclasses

from absl import flags, logging

from data.mnist import SOURCES
from trainer.config import PRECISIONS, ConfigError, TrainConfig
from trainer.distribution.strategies import STRATEGIES
from trainer.optimizers import OPTIMIZERS, SCHEDULES

_DEFAULTS = TrainConfig()


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines one flag per TrainConfig field on `flag_values`, with the field's default."""
    fv = flag_values
    flags.DEFINE_string("logdir", _DEFAULTS.logdir, "Parent directory of all runs.", flag_values=fv)
    flags.DEFINE_string(
        "run_name",
        _DEFAULTS.run_name,
        "Run directory under --logdir; empty derives it from the hyperparameters.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "strategy",
        _DEFAULTS.strategy,
        STRATEGIES,
        "auto: MirroredStrategy over every GPU, or over --cpu_replicas CPU devices "
        "when more than one, else a single device.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "cpu_replicas",
        _DEFAULTS.cpu_replicas,
        "Split the CPU into this many logical devices (machines without GPUs).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "optimizer", _DEFAULTS.optimizer, list(OPTIMIZERS), "Optimizer.", flag_values=fv
    )
    flags.DEFINE_float(
        "learning_rate", _DEFAULTS.learning_rate, "Peak learning rate.", flag_values=fv
    )
    flags.DEFINE_enum(
        "lr_schedule",
        _DEFAULTS.lr_schedule,
        SCHEDULES,
        "constant, or cosine decay to 0 over the run.",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "warmup_epochs",
        _DEFAULTS.warmup_epochs,
        "Linear warm-up before the cosine decay, in epochs.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "batch_size",
        _DEFAULTS.batch_size,
        "Global batch size, split evenly across replicas.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "epochs", _DEFAULTS.epochs, "Passes over the 50,000 training images.", flag_values=fv
    )
    flags.DEFINE_list(
        "hidden_sizes",
        list(map(str, _DEFAULTS.hidden_sizes)),
        "Widths of the hidden layers.",
        flag_values=fv,
    )
    flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seeds weights and data order.", flag_values=fv)
    flags.DEFINE_integer(
        "steps_per_loop",
        _DEFAULTS.steps_per_loop,
        "Train steps per call of the compiled loop (and per logged point).",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "data_source",
        _DEFAULTS.data_source,
        SOURCES,
        "auto: TFDS if MNIST is prepared in --data_dir, else the bundled copy.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "data_dir",
        _DEFAULTS.data_dir,
        "TFDS data directory (TFDS default if unset).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "max_checkpoints", _DEFAULTS.max_checkpoints, "Checkpoints kept.", flag_values=fv
    )
    flags.DEFINE_integer(
        "checkpoint_every_steps",
        _DEFAULTS.checkpoint_every_steps,
        "Also checkpoint every this many steps; 0: at epoch ends only.",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "deterministic",
        _DEFAULTS.deterministic,
        "Turn on TensorFlow op determinism: a rerun, or a killed and resumed run, "
        "gives bit-for-bit the same weights (slower on GPUs).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "xla_update",
        _DEFAULTS.xla_update,
        "Compile each variable's optimizer update with XLA into one fused pass "
        "(faster); --noxla_update runs it op by op, e.g. where XLA cannot compile "
        "for the device.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "precision",
        _DEFAULTS.precision,
        PRECISIONS,
        "float32; or mixed precision (Keras's policy names): float32 weights and "
        "optimizer state, forward and backward passes in bfloat16 or float16 "
        "(float16 with dynamic loss scaling).",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "jit_compile",
        _DEFAULTS.jit_compile,
        "Compile each replica's forward and backward pass with XLA, as Keras's "
        "jit_compile does (pays on GPUs; slower on this project's CPU, see "
        "README).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "nonfinite_retries",
        _DEFAULTS.nonfinite_retries,
        "On a NaN/inf loss or gradient, restore the last good checkpoint and go "
        "on, up to this many times; 0: stop with an error.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "histogram_every_steps",
        _DEFAULTS.histogram_every_steps,
        "Histograms of weights and optimizer state every this many steps; 0: at epoch ends.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "profile_steps",
        [],
        "START,END: record a profiler trace of these steps (TensorBoard's Profile "
        "tab); empty: no trace.",
        flag_values=fv,
    )


def _integers(flag: str, values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise ConfigError(
            f"--{flag}={','.join(values)}: must be comma-separated integers"
        ) from None


def config_from_flags(flag_values: flags.FlagValues) -> TrainConfig:
    """Every TrainConfig field comes from the flag of the same name (not yet validated)."""
    values = {
        field.name: flag_values[field.name].value for field in dataclasses.fields(TrainConfig)
    }
    for name in ("hidden_sizes", "profile_steps"):
        values[name] = _integers(name, values[name])
    if not flag_values["warmup_epochs"].present and values["warmup_epochs"] >= values["epochs"]:
        # A short run with the default warm-up: warm up for a tenth of it. A warm-up the user
        # set that is not shorter than the run stays an error (TrainConfig.validate).
        values["warmup_epochs"] = values["epochs"] / 10
        logging.info(
            "--warmup_epochs: the default %g epoch(s) is not shorter than --epochs=%d; "
            "warming up for %g instead",
            _DEFAULTS.warmup_epochs,
            values["epochs"],
            values["warmup_epochs"],
        )
    return TrainConfig(**values)
