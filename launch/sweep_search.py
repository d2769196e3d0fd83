"""A random search's space and its quasirandom points, as MLCommons AlgoPerf tunes optimizers.

The space is AlgoPerf's `tuning_search_space.json` format, keyed by trainer flags:

    {"learning_rate": {"min": 1e-4, "max": 1e-2, "scaling": "log"},
     "warmup_epochs": {"min": 0.0, "max": 0.5, "scaling": "linear"},
     "optimizer": {"feasible_points": ["adam", "lion"]}}

`--trials=N` takes the first N points of a scrambled Halton sequence (scipy.stats.qmc), one
dimension a flag, seeded by `--search_seed`: the same file and seed plan the same points on
every machine and in every process. A coordinate u in [0, 1) becomes min + u (max - min), on a
log scale for "log", or the feasible point at floor(u n). Numbers are rounded to 4 significant
digits, so that a run's name and the value its trainer is given are one and the same.

No TensorFlow here: a bad space is refused before anything loads.
"""

import dataclasses
import json
import math

from launch.trainer_args import LaunchError, check_trainer_flag

SCALINGS = ("linear", "log")
SIGNIFICANT_DIGITS = 4


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One flag of the space: a range (min, max, scaling) or a list of feasible points."""

    flag: str
    minimum: float | None = None
    maximum: float | None = None
    scaling: str = "linear"
    feasible_points: tuple = ()

    def value(self, u: float, is_int: bool):
        """The flag's value at quasirandom coordinate `u` in [0, 1)."""
        if self.feasible_points:
            count = len(self.feasible_points)
            return self.feasible_points[min(int(u * count), count - 1)]
        if self.scaling == "log":
            low, high = math.log(self.minimum), math.log(self.maximum)
            number = math.exp(low + u * (high - low))
        else:
            number = self.minimum + u * (self.maximum - self.minimum)
        if is_int:
            return round(number)
        return float(f"{number:.{SIGNIFICANT_DIGITS}g}")

    def as_json(self) -> dict:
        if self.feasible_points:
            return {"feasible_points": list(self.feasible_points)}
        return {"min": self.minimum, "max": self.maximum, "scaling": self.scaling}


def read_search_space(path: str, set_by_sweep: dict[str, str]) -> tuple[Dimension, ...]:
    """The space in `path`, checked; raises LaunchError naming the file and the flag."""
    given = f"--search={path}"
    try:
        with open(path) as f:
            space = json.load(f)
    except FileNotFoundError:
        raise LaunchError(f"{given}: no such file") from None
    except (OSError, ValueError) as e:
        raise LaunchError(f"{given}: not a JSON search space: {e}") from None
    return parse_search_space(space, given, set_by_sweep)


def parse_search_space(space, given: str, set_by_sweep: dict[str, str]) -> tuple[Dimension, ...]:
    """A space as read from its JSON; errors start with `given`."""
    if not isinstance(space, dict) or not space:
        raise LaunchError(
            f'{given}: expected an object of trainer flags, e.g. {{"learning_rate": '
            '{"min": 1e-4, "max": 1e-2, "scaling": "log"}}'
        )
    return tuple(_dimension(given, flag, spec, set_by_sweep) for flag, spec in space.items())


def _dimension(given: str, flag: str, spec, set_by_sweep: dict[str, str]) -> Dimension:
    check_trainer_flag(flag, given, set_by_sweep)
    at = f"{given}: {flag}"
    if isinstance(spec, dict) and set(spec) == {"feasible_points"}:
        points = spec["feasible_points"]
        if not isinstance(points, list) or not points:
            raise LaunchError(f"{at}: feasible_points must be a list of one value or more")
        return Dimension(flag, feasible_points=tuple(points))
    if not isinstance(spec, dict) or not {"min", "max"} <= set(spec) <= {"min", "max", "scaling"}:
        raise LaunchError(
            f'{at}: expected {{"min": .., "max": .., "scaling": "log"|"linear"}} '
            'or {"feasible_points": [...]}'
        )
    low, high, scaling = spec["min"], spec["max"], spec.get("scaling", "linear")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high)):
        raise LaunchError(f"{at}: min and max must be numbers")
    if scaling not in SCALINGS:
        raise LaunchError(f"{at}: scaling {scaling!r} must be one of {', '.join(SCALINGS)}")
    if low > high:
        raise LaunchError(f"{at}: min {low} is greater than max {high}")
    if scaling == "log" and low <= 0:
        raise LaunchError(f"{at}: a log range must be above 0, not from {low}")
    return Dimension(flag, float(low), float(high), scaling)


def quasirandom_points(
    space: tuple[Dimension, ...], trials: int, seed: int, int_flags: frozenset[str]
) -> list[dict]:
    """`trials` points of the space: {flag: value}, the same for the same space and seed."""
    from scipy.stats import qmc  # Only a search needs it.

    sequence = qmc.Halton(d=len(space), scramble=True, seed=seed)
    return [
        {dim.flag: dim.value(float(u), dim.flag in int_flags) for dim, u in zip(space, row)}
        for row in sequence.random(trials)
    ]
