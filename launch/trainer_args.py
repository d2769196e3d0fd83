"""What a launcher may pass through to `python -m trainer.train`, checked before anything starts.

The trainer's flags mirror `TrainConfig`'s fields, so the fields are the list of flags a
launcher checks against: a misspelt flag, or a value the trainer would refuse, is refused here,
once, rather than by every run of a sweep or by every restart of a cluster job. The values are
checked by the trainer's own flag definitions and TrainConfig.validate, not by a copy of them.
"""

import dataclasses
import re

from absl import flags, logging

from trainer.common.errors import OneLineError
from trainer.config import ConfigError, TrainConfig, check_batch_split
from trainer.flags import config_from_flags, define_flags

# {trainer flag: the type of its TrainConfig field}.
TRAINER_FLAGS = {field.name: field.type for field in dataclasses.fields(TrainConfig)}
# absl's flag for how much a trainer's terminal shows (trainer/common/terminal.py): it changes
# nothing a run computes or writes, so a launcher passes it through too.
TERMINAL_FLAGS = ("verbosity",)
# What the cluster launchers (local, Slurm, Kubernetes) give every trainer they start.
MULTI_WORKER_FLAG = "--strategy=multi_worker"


class LaunchError(OneLineError):
    """A launcher setting that cannot work; the message names the flag."""


def check_trainer_args(
    args: list[str],
    set_by_launcher: dict[str, str],
    replicas: int | None = None,
    launcher_args: tuple[str, ...] = (),
) -> list[str]:
    """Returns `args` (trainer flags given after `--`) once each is a trainer flag that the
    launcher does not set itself (see check_trainer_flag), or --verbosity, and the trainer
    would accept their values together with the flags the launcher gives it, `launcher_args`
    (see trainer_config).

    With `replicas` (the job's replicas in sync), the global --batch_size must also divide
    evenly among them, as the trainer requires: said before any replica starts.
    """
    check_trainer_flag_names(args, set_by_launcher)
    config = trainer_config([*launcher_args, *args])
    if replicas is not None:
        try:
            check_batch_split(config.batch_size, replicas, config.grad_accum_steps)
        except ConfigError as e:
            raise LaunchError(str(e)) from None
    return list(args)


def check_trainer_flag_names(args: list[str], set_by_launcher: dict[str, str]) -> None:
    """Raises LaunchError unless each of `args` is --<trainer flag>[=<value>] that the launcher
    does not set itself (see check_trainer_flag), or --verbosity; values are not looked at."""
    for arg in args:
        match = re.fullmatch(r"--(\w+)(=.*)?", arg)
        if not match:
            raise LaunchError(
                f"trainer argument {arg!r}: expected --<trainer flag>=<value> after --"
            )
        name = match.group(1)
        if name.startswith("no") and TRAINER_FLAGS.get(name[2:]) is bool:  # --nodeterministic
            name = name[2:]
        if name in TERMINAL_FLAGS:
            continue
        check_trainer_flag(name, f"trainer argument {arg}", set_by_launcher)


def trainer_config(args: list[str]) -> TrainConfig:
    """The validated TrainConfig the trainer would build from `args` (absl flags, a
    --flagfile too); raises LaunchError with the trainer's one-line message otherwise."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    # What the trainer makes of its defaults (a shorter warm-up) it logs in each run's output;
    # a launcher checking the flags of many runs says nothing of it.
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.WARNING)
    try:
        flag_values(["trainer.train", *(arg for arg in args if not _is_terminal_flag(arg))])
        return config_from_flags(flag_values).validate()
    except flags.Error as e:
        # absl says "flag --epochs=x: invalid literal ..."; ours start at the flag.
        raise LaunchError(str(e).splitlines()[0].removeprefix("flag ")) from None
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    finally:
        logging.set_verbosity(verbosity)


def _is_terminal_flag(arg: str) -> bool:
    return any(re.fullmatch(rf"--{name}(=.*)?", arg) for name in TERMINAL_FLAGS)


def check_trainer_flag(name: str, given_as: str, set_by_launcher: dict[str, str]) -> None:
    """Raises LaunchError, starting with `given_as`, unless --`name` is a trainer flag that the
    launcher leaves to the user.

    `set_by_launcher` maps each flag the launcher sets to the launcher's own flag that sets it,
    so the error tells the user where that setting belongs.
    """
    if name not in TRAINER_FLAGS:
        raise LaunchError(
            f"{given_as}: --{name} is not a trainer flag "
            "(python -m trainer.train --helpfull lists them)"
        )
    if name in set_by_launcher:
        raise LaunchError(f"{given_as}: --{name} is set by {set_by_launcher[name]}")
