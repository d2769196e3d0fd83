"""A sweep's plan: the runs of every combination of some trainer flags' values (and of a
search's quasirandom points, and of seeds), each named after its values, checked as their
trainers will read them before anything is written.

No TensorFlow here: a bad grid or flag is refused at once (launch/sweep_lib.py runs the plan).
"""

import dataclasses
import itertools
import json
import os
import re
import sys
import types
import typing
from typing import NamedTuple

from launch.sweep_search import (
    Dimension,
    parse_search_space,
    quasirandom_points,
    read_search_space,
)
from launch.trainer_args import (
    TRAINER_FLAGS,
    LaunchError,
    check_trainer_flag,
    check_trainer_flag_names,
    trainer_config,
)

# Trainer flags the sweep sets for every run, and what the user sets instead.
# The sweep's plan in its directory: how it was asked for, and every run's flags.
PLAN_FILE = "sweep.json"
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
    """One combination of the grid's values (and of a search's point, and a seed): a run
    directory of its own."""

    values: dict[str, GridValue]  # In the grid's order, then the search space's.
    trial: int | None = None  # With --search: the point's index in the quasirandom sequence.
    seed: int | None = None  # With --seeds: the repeat's --seed.

    @property
    def point(self) -> str:
        """The name of the run's point, shared by its repeats on other seeds."""
        trial = [] if self.trial is None else [f"trial={self.trial}"]
        return ",".join(trial + [f"{flag}={value.label}" for flag, value in self.values.items()])

    @property
    def name(self) -> str:
        return self.point + ("" if self.seed is None else f",seed={self.seed}")

    def trainer_flags(self) -> list[str]:
        seed = [] if self.seed is None else [f"--seed={self.seed}"]
        return [f"--{flag}={value.flag}" for flag, value in self.values.items()] + seed


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep: nothing in it can fail before the trainers start."""

    sweep_dir: str
    grid: dict[str, tuple[GridValue, ...]]
    base_flagfile: str | None = None
    trainer_args: tuple[str, ...] = ()
    search: tuple[Dimension, ...] = ()
    trials: int = 0
    search_seed: int = 0
    seeds: int = 0  # 0: each point once, at the trainer's --seed.

    @property
    def columns(self) -> list[str]:
        """The table's value columns: a search's trial, the swept flags, the seed of --seeds."""
        trial = ["trial"] if self.search else []
        return [*trial, *self.grid, *(dim.flag for dim in self.search), *["seed"][: self.seeds]]

    @property
    def runs(self) -> list[SweepRun]:
        points = self.points()
        repeats = range(self.seeds) if self.seeds else [None]
        return [
            SweepRun({**dict(zip(self.grid, values)), **point}, trial, seed)
            for values in itertools.product(*self.grid.values())
            for trial, point in points
            for seed in repeats
        ]

    def points(self) -> list[tuple[int | None, dict[str, GridValue]]]:
        """The search's points, (trial, {flag: value}), or one empty point without a search."""
        if not self.search:
            return [(None, {})]
        kinds = {dim.flag: _kind(TRAINER_FLAGS[dim.flag]) for dim in self.search}
        ints = frozenset(flag for flag, kind in kinds.items() if kind == "int")
        return [
            (trial, {flag: _search_value(flag, value) for flag, value in point.items()})
            for trial, point in enumerate(
                quasirandom_points(self.search, self.trials, self.search_seed, ints)
            )
        ]

    def run_dir(self, run: SweepRun) -> str:
        return os.path.join(self.sweep_dir, run.name)

    def command(self, run: SweepRun) -> list[str]:
        return [sys.executable, "-m", "trainer.train", *self.run_flags(run)]

    def run_flags(self, run: SweepRun, sweep_dir: str | None = None) -> list[str]:
        """The trainer's flags for `run`: later flags win in absl, so the grid's values override
        the base flagfile's. `sweep_dir`: where the run's trainer sees the sweep, if not here."""
        return [f"--logdir={sweep_dir or self.sweep_dir}", *self.relative_flags(run)]

    def relative_flags(self, run: SweepRun) -> list[str]:
        """The run's flags but its --logdir: what the plan file holds for each run."""
        base = [f"--flagfile={self.base_flagfile}"] if self.base_flagfile else []
        return [*base, f"--run_name={run.name}", *self.trainer_args, *run.trainer_flags()]

    def hparam_domains(self) -> dict[str, dict]:
        """Each swept flag's values, as the HParams experiment lists them: {"values": [...]}, or
        a search range's {"min": .., "max": ..}."""
        domains = {
            flag: {"values": [v.hparam for v in values]} for flag, values in self.grid.items()
        }
        for dim in self.search:
            if dim.feasible_points:
                values = [_search_value(dim.flag, p) for p in dim.feasible_points]
                domains[dim.flag] = {"values": [v.hparam for v in values]}
            else:
                domains[dim.flag] = {"min": dim.minimum, "max": dim.maximum}
        return domains

    def plan(self) -> dict:
        """What the sweep's directory keeps of it (PLAN_FILE): how it was asked for, and each
        run's name, flags and HParams values, which an array task picks by its index."""
        return {
            "grid": {flag: [v.label for v in values] for flag, values in self.grid.items()},
            "search": {dim.flag: dim.as_json() for dim in self.search},
            "trials": self.trials,
            "search_seed": self.search_seed,
            "seeds": self.seeds,
            "base_flagfile": self.base_flagfile,
            "trainer_args": list(self.trainer_args),
            "hparams": self.hparam_domains(),
            "runs": [
                {
                    "name": run.name,
                    "flags": self.relative_flags(run),
                    # The seed of --seeds is left out: its repeats form one HParams group.
                    "hparams": {flag: value.hparam for flag, value in run.values.items()},
                }
                for run in self.runs
            ],
        }


def write_plan(sweep: Sweep) -> str:
    """Writes the plan into the sweep's directory, or finds the same one there; a different one
    is refused, since array tasks of the first may still be reading it."""
    path = os.path.join(sweep.sweep_dir, PLAN_FILE)
    plan = sweep.plan()
    existing = read_plan(path)
    if existing is not None and existing != plan:
        raise LaunchError(
            f"--sweep_dir={sweep.sweep_dir}: holds the plan of another sweep ({path}); give "
            "another --sweep_dir, or remove that file to replace the plan"
        )
    if existing is None:
        os.makedirs(sweep.sweep_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(plan, f, indent=2)
        os.replace(path + ".tmp", path)  # Whole or not at all: tasks read it.
    return path


def read_plan(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def sweep_from_plan(sweep_dir: str) -> Sweep:
    """The sweep whose plan is in `sweep_dir`, as --status reads it; LaunchError without one."""
    path = os.path.join(sweep_dir, PLAN_FILE)
    plan = read_plan(path)
    if plan is None:
        raise LaunchError(f"--sweep_dir={sweep_dir}: no sweep's plan there ({path} not found)")
    grid = dict(
        _parse_grid_entry(f"{flag}={','.join(labels)}", {}) for flag, labels in plan["grid"].items()
    )
    sweep = Sweep(
        os.path.abspath(sweep_dir),
        grid,
        plan["base_flagfile"],
        tuple(plan["trainer_args"]),
        parse_search_space(plan["search"], path, {}) if plan["search"] else (),
        plan["trials"],
        plan["search_seed"],
        plan["seeds"],
    )
    if sweep.plan() != plan:  # Planned by another version of this code.
        raise LaunchError(f"{path}: its runs differ from what its settings plan here")
    return sweep


def plan_sweep(
    grid_entries: list[str],
    sweep_dir: str,
    base_flagfile: str | None = None,
    trainer_args: list[str] = (),
    search: str | None = None,
    trials: int | None = None,
    search_seed: int = 0,
    seeds: int | None = None,
) -> Sweep:
    """Checks every setting before anything is written; raises LaunchError naming the flag.

    A grid entry is `<trainer flag>=<value>,<value>,...`; a list flag's items are joined by
    `x` within one value (`hidden_sizes=700x500,256`), as in the trainer's run names. `search`
    is a search space file (launch/sweep_search.py), of which `trials` points are run; `seeds`
    repeats every point on --seed=0 to seeds-1.
    """
    if not sweep_dir:
        raise LaunchError("--sweep_dir: required: the directory that holds the sweep's runs")
    if os.path.exists(sweep_dir) and not os.path.isdir(sweep_dir):
        raise LaunchError(f"--sweep_dir={sweep_dir}: is a file, not a directory")
    if base_flagfile and not os.path.isfile(base_flagfile):
        raise LaunchError(f"--base_flagfile={base_flagfile}: no such file")
    if trials is not None and not search:
        raise LaunchError(f"--trials={trials}: needs --search, the space to draw the points from")
    if search and (trials is None or trials < 1):
        raise LaunchError(f"--search={search}: needs --trials=N, N at least 1: the points to run")
    if seeds is not None and seeds < 1:
        raise LaunchError(f"--seeds={seeds}: must be at least 1")
    if not grid_entries and not search:
        raise LaunchError(
            "--grid: give at least one, e.g. --grid=learning_rate=1e-3,2e-3, or a --search"
        )
    set_by_sweep = {**SET_BY_SWEEP, **({"seed": f"--seeds={seeds}"} if seeds else {})}
    grid, swept_by = {}, {}
    for entry in grid_entries:
        flag, values = _parse_grid_entry(entry, {**set_by_sweep, **swept_by})
        grid[flag], swept_by[flag] = values, f"--grid={entry}"
    space = read_search_space(search, {**set_by_sweep, **swept_by}) if search else ()
    swept_by.update({dim.flag: f"--search={search}" for dim in space})
    check_trainer_flag_names(list(trainer_args), {**set_by_sweep, **swept_by})
    sweep = Sweep(
        os.path.abspath(sweep_dir),
        grid,
        os.path.abspath(base_flagfile) if base_flagfile else None,
        tuple(trainer_args),
        space,
        trials or 0,
        search_seed,
        seeds or 0,
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


def _parse_grid_entry(entry: str, taken: dict[str, str]) -> tuple[str, tuple[GridValue, ...]]:
    """`taken`: the flags the sweep sets, or an earlier --grid, and where."""
    match = re.fullmatch(r"(\w+)=(.*)", entry)
    if not match:
        raise LaunchError(
            f"--grid={entry}: expected <trainer flag>=<value>,<value>,..., "
            "e.g. --grid=learning_rate=1e-3,2e-3"
        )
    flag, texts = match.group(1), match.group(2).split(",")
    if flag in taken and taken[flag].startswith("--grid="):
        raise LaunchError(f"--grid={entry}: --{flag} is already swept by {taken[flag]}")
    check_trainer_flag(flag, f"--grid={entry}", taken)
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
    optional = [t for t in typing.get_args(field_type) if t is not type(None)]
    if isinstance(field_type, types.UnionType) and len(optional) == 1:  # float | None
        field_type = optional[0]
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


def _search_value(flag: str, value) -> GridValue:
    """A search point's value (a number, or a feasible point from the JSON) as a GridValue."""
    kind = _kind(TRAINER_FLAGS[flag])
    text = "x".join(map(str, value)) if isinstance(value, list) else str(value)
    try:
        return _grid_value(kind, text)
    except ValueError:
        raise LaunchError(
            f"--search: {value!r} is not a value of --{flag}: expected {_EXPECTED[kind]}"
        ) from None
