"""A grid sweep's plan: the runs of every combination of some trainer flags' values, each
named after its values, checked as their trainers will read them before anything is written.

No TensorFlow here: a bad grid or flag is refused at once (launch/sweep_lib.py runs the plan).
"""

import dataclasses
import itertools
import os
import re
import sys
import typing
from typing import NamedTuple

from launch.trainer_args import (
    TRAINER_FLAGS,
    LaunchError,
    check_trainer_flag,
    check_trainer_flag_names,
    trainer_config,
)

# Trainer flags the sweep sets for every run, and what the user sets instead.
SET_BY_SWEEP = {
    "logdir": "--sweep_dir",
    "run_name": "the sweep, which names each run after its grid values",
}


class GridValue(NamedTuple):
    """One value of a swept flag, in the three forms it takes."""

    label: str  # In the run's name and the table: 0.001, 700x500, true.
    hparam: int | float | bool | str  # What the HParams dashboard shows and filters on.
    flag: str  # What the trainer is given: --hidden_sizes=700,500.


@dataclasses.dataclass(frozen=True)
class SweepRun:
    """One combination of the grid's values: a run directory of its own."""

    values: dict[str, GridValue]  # In the grid's order.

    @property
    def name(self) -> str:
        return ",".join(f"{flag}={value.label}" for flag, value in self.values.items())

    def trainer_flags(self) -> list[str]:
        return [f"--{flag}={value.flag}" for flag, value in self.values.items()]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep: nothing in it can fail before the trainers start."""

    sweep_dir: str
    grid: dict[str, tuple[GridValue, ...]]
    base_flagfile: str | None = None
    trainer_args: tuple[str, ...] = ()

    @property
    def runs(self) -> list[SweepRun]:
        return [
            SweepRun(dict(zip(self.grid, values)))
            for values in itertools.product(*self.grid.values())
        ]

    def run_dir(self, run: SweepRun) -> str:
        return os.path.join(self.sweep_dir, run.name)

    def command(self, run: SweepRun) -> list[str]:
        return [sys.executable, "-m", "trainer.train", *self.run_flags(run)]

    def run_flags(self, run: SweepRun) -> list[str]:
        """The trainer's flags for `run`: later flags win in absl, so the grid's values override
        the base flagfile's."""
        base = [f"--flagfile={self.base_flagfile}"] if self.base_flagfile else []
        return [
            *base,
            f"--logdir={self.sweep_dir}",
            f"--run_name={run.name}",
            *self.trainer_args,
            *run.trainer_flags(),
        ]


def plan_sweep(
    grid_entries: list[str],
    sweep_dir: str,
    base_flagfile: str | None = None,
    trainer_args: list[str] = (),
) -> Sweep:
    """Checks every setting before anything is written; raises LaunchError naming the flag.

    A grid entry is `<trainer flag>=<value>,<value>,...`; a list flag's items are joined by
    `x` within one value (`hidden_sizes=700x500,256`), as in the trainer's run names.
    """
    if not sweep_dir:
        raise LaunchError("--sweep_dir: required: the directory that holds the sweep's runs")
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
        raise LaunchError(f"--sweep_dir={sweep_dir}: is a file, not a directory")
    if base_flagfile and not os.path.isfile(base_flagfile):
        raise LaunchError(f"--base_flagfile={base_flagfile}: no such file")
    if not grid_entries:
        raise LaunchError("--grid: give at least one, e.g. --grid=learning_rate=1e-3,2e-3")
    grid, swept_by = {}, {}
    for entry in grid_entries:
        flag, values = _parse_grid_entry(entry, swept_by)
        grid[flag], swept_by[flag] = values, f"--grid={entry}"
    check_trainer_flag_names(list(trainer_args), {**SET_BY_SWEEP, **swept_by})
    sweep = Sweep(
        os.path.abspath(sweep_dir),
        grid,
        os.path.abspath(base_flagfile) if base_flagfile else None,
        tuple(trainer_args),
    )
    for run in sweep.runs:
        # Every run's flags as its trainer will read them (values together, since one may bound
        # another, e.g. --warmup_epochs by --epochs), so that no run starts if any would fail.
        try:
            trainer_config(sweep.run_flags(run))
        except LaunchError as e:
            raise LaunchError(f"run {run.name}: {e}") from None
    return sweep


# How each kind of trainer flag is written in a grid, and what makes a value bad.
_EXPECTED = {
    "list": "positive integers joined by x, e.g. 700x500",
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "letters, digits and . @ + - _ only (it is part of the run directory's name)",
}


def _parse_grid_entry(entry: str, swept_by: dict[str, str]) -> tuple[str, tuple[GridValue, ...]]:
    match = re.fullmatch(r"(\w+)=(.*)", entry)
    if not match:
        raise LaunchError(
            f"--grid={entry}: expected <trainer flag>=<value>,<value>,..., "
            "e.g. --grid=learning_rate=1e-3,2e-3"
        )
    flag, texts = match.group(1), match.group(2).split(",")
    check_trainer_flag(flag, f"--grid={entry}", SET_BY_SWEEP)
    if flag in swept_by:
        raise LaunchError(f"--grid={entry}: --{flag} is already swept by {swept_by[flag]}")
    if "" in texts:
        raise LaunchError(f"--grid={entry}: an empty value; give values separated by commas")
    kind = _kind(TRAINER_FLAGS[flag])
    values = []
    for text in texts:
        try:
            value = _grid_value(kind, text)
        except ValueError:
            raise LaunchError(
                f"--grid={entry}: {text!r} is not a value of --{flag}: expected {_EXPECTED[kind]}"
            ) from None
        if value.label in [v.label for v in values]:
            raise LaunchError(f"--grid={entry}: {value.label} is listed twice")
        values.append(value)
    return flag, tuple(values)


def _kind(field_type) -> str:
    if typing.get_origin(field_type) is tuple:
        return "list"
    return {bool: "bool", int: "int", float: "float"}.get(field_type, "str")


def _grid_value(kind: str, text: str) -> GridValue:
    """Raises ValueError if `text` is not a `kind` value."""
    if kind == "list":
        widths = [int(item) for item in text.split("x")]
        if min(widths) < 1:
            raise ValueError(text)
        label = "x".join(map(str, widths))
        return GridValue(label, label, ",".join(map(str, widths)))
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return GridValue(text.lower(), text.lower() == "true", text.lower())
    if kind in ("int", "float"):
        # repr: the same number always gets the same label (1e-3 and 0.001 name one run), and
        # the label reads back as exactly that number.
        number = int(text) if kind == "int" else float(text)
        return GridValue(repr(number), number, repr(number))
    if not re.fullmatch(r"[\w.@+-]+", text):
        raise ValueError(text)
    return GridValue(text, text, text)
