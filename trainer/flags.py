"""The trainer's flags: defined on any FlagValues, read back as one TrainConfig.

`trainer/train.py` defines them on absl's global FLAGS; launchers define them on a private
FlagValues to check the flags they pass through with the trainer's own parsing and validation
(launch/trainer_args.py), so a launcher refuses exactly what the trainer would.
"""

import dataclasses

from absl import flags, logging

from trainer.choices import AVERAGING_OPTIMIZERS
from trainer.config import ConfigError, TrainConfig

_DEFAULTS = TrainConfig()
INTEGERS = tuple[int, ...]  # The type of fields given as comma-separated integers.
NAMES = tuple[str, ...] | None  # ... and of comma-separated names, unset by default.


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines one flag per TrainConfig field on `flag_values`: its default, help and values."""
    for field in dataclasses.fields(TrainConfig):
        name, default, text = field.name, field.default, field.metadata["help"]
        choices = field.metadata["choices"]
        if choices and {"true", "false"} <= set(choices):  # A boolean with "auto" beside it.
            flags.DEFINE_flag(_Switch(name, default, text, choices), flag_values=flag_values)
        elif choices:
            flags.DEFINE_enum(name, default, list(choices), text, flag_values=flag_values)
        elif field.type is bool:
            flags.DEFINE_bool(name, default, text, flag_values=flag_values)
        elif field.type is int:
            flags.DEFINE_integer(name, default, text, flag_values=flag_values)
        elif field.type in (float, float | None):
            flags.DEFINE_float(name, default, text, flag_values=flag_values)
        elif field.type == INTEGERS:
            flags.DEFINE_list(name, [str(v) for v in default], text, flag_values=flag_values)
        elif field.type == NAMES:
            flags.DEFINE_list(name, default, text, flag_values=flag_values)
        else:  # str, or str | None
            flags.DEFINE_string(name, default, text, flag_values=flag_values)


class _Switch(flags.Flag):
    """A boolean flag that also takes other words ("auto"): `--name`, `--noname`, `--name=true`
    (or 1/0) as for any boolean flag, and `--name=auto`."""

    def __init__(self, name, default, text, choices):
        super().__init__(
            _SwitchParser(choices), flags.ArgumentSerializer(), name, default, text, boolean=True
        )

    def _serialize(self, value):
        return f"--{self.name}={value}"  # Not absl's --name/--noname, which has no "auto".


class _SwitchParser(flags.ArgumentParser):
    def __init__(self, choices):
        self.choices = tuple(choices)

    def parse(self, argument):
        if str(argument).lower() in self.choices:
            return str(argument).lower()
        try:  # absl's own spellings of a boolean: 1/0, t/f, True/False.
            return "true" if flags.BooleanParser().parse(argument) else "false"
        except ValueError:
            raise ValueError(f"must be one of {', '.join(self.choices)}") from None

    def flag_type(self):
        return " | ".join(self.choices)


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
    for field in dataclasses.fields(TrainConfig):
        if field.type == INTEGERS:  # A comma-separated list on the command line.
            values[field.name] = _integers(field.name, values[field.name])
        elif field.type == NAMES and values[field.name] is not None:
            values[field.name] = tuple(values[field.name])
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
    if not flag_values["lr_schedule"].present and values["optimizer"] in AVERAGING_OPTIMIZERS:
        # Its average of the weights takes the place of a decay, which it refuses.
        values["lr_schedule"] = "constant"
        logging.info(
            "--lr_schedule: constant for --optimizer=%s, which averages its weights instead",
            values["optimizer"],
        )
    return TrainConfig(**values)
