"""What a launcher may pass through to `python -m trainer.train`, checked before anything starts.

The trainer's flags mirror `TrainConfig`'s fields, so the fields are the list of flags a
launcher checks against: a misspelt flag is refused here, once, rather than by every run of a
sweep or by every restart of a cluster job.
"""

import dataclasses
import re

from trainer.config import TrainConfig

# {trainer flag: the type of its TrainConfig field}.
TRAINER_FLAGS = {field.name: field.type for field in dataclasses.fields(TrainConfig)}
# absl's flag for how much a trainer's terminal shows (trainer/terminal.py): it changes nothing
# a run computes or writes, so a launcher passes it through too.
TERMINAL_FLAGS = ("verbosity",)


class LaunchError(ValueError):
    """A launcher setting that cannot work; the message names the flag."""


def check_trainer_args(args: list[str], set_by_launcher: dict[str, str]) -> list[str]:
    """Returns `args` (trainer flags given after `--`) once each is a trainer flag that the
    launcher does not set itself (see check_trainer_flag), or --verbosity."""
    for arg in args:
        match = re.fullmatch(r"--(\w+)(=.*)?", arg)
        if not match:
            raise LaunchError(f"trainer argument {arg!r}: expected --<trainer flag>=<value> "
                              "after --")
        name = match.group(1)
        if name.startswith("no") and TRAINER_FLAGS.get(name[2:]) is bool:  # --nodeterministic
            name = name[2:]
        if name in TERMINAL_FLAGS:
            continue
        check_trainer_flag(name, f"trainer argument {arg}", set_by_launcher)
    return list(args)


def check_trainer_flag(name: str, given_as: str, set_by_launcher: dict[str, str]) -> None:
    """Raises LaunchError, starting with `given_as`, unless --`name` is a trainer flag that the
    launcher leaves to the user.

    `set_by_launcher` maps each flag the launcher sets to the launcher's own flag that sets it,
    so the error tells the user where that setting belongs.
    """
    if name not in TRAINER_FLAGS:
        raise LaunchError(f"{given_as}: --{name} is not a trainer flag "
                          "(python -m trainer.train --helpfull lists them)")
    if name in set_by_launcher:
        raise LaunchError(f"{given_as}: --{name} is set by {set_by_launcher[name]}")
