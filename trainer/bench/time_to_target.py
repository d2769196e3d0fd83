"""Benchmark section `time_to_target`: each optimizer tuned, then timed to validation targets,
as MLCommons AlgoPerf scores training algorithms.

    time_to_target  for each optimizer asked for (--time_to_target_optimizers, default all):
                    TRIALS quasirandom points of its SEARCH_SPACES entry, each trained on the
                    base seed within the step budget; the best point (fewest steps to the last
                    target, then to the others, then the best final validation accuracy) on
                    SEEDS seeds, the best trial's run being its first. Per optimizer: the
                    point, the steps and the training seconds to each of TARGETS (the median
                    over seeds), the final test accuracy (mean, min-max), and the performance
                    profile of every optimizer run, drawn to a PNG.

A space is AlgoPerf's `tuning_search_space.json` format, its points drawn by the sweep's own
search (launch/sweep_search.py: scrambled Halton, 4 significant digits), so `python -m
launch.sweep --search=<space> --trials=5` plans the same points. Keys are trainer flags, and
`one_minus_<flag>` (AlgoPerf's `one_minus_beta1`) draws 1 - flag, on a log scale near 1.

The budget is the base config's epochs (the trainer's defaults: 10 epochs, 3,900 steps); the
schedule spans it, and a target not reached within it is not reached (an infinite time, in
the profile). Validation runs EVALS_PER_EPOCH times an epoch, so a step to a target is known
to a quarter epoch. Steps to a target do not depend on the machine's load; the training
seconds (evaluation left out, the first call's tracing in, as AlgoPerf counts compilation) do.
Runs are the bench's OurTrainer: the trainer's build_train_state and input pipeline.
"""

import dataclasses
import math
import statistics
import time
from collections.abc import Sequence

from absl import logging

from launch.sweep_search import Dimension, parse_search_space, quasirandom_points
from trainer.bench.training import OurTrainer
from trainer.choices import AVERAGING_OPTIMIZERS, OPTIMIZERS
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.step.state import DivergenceError

TARGETS = (0.97, 0.985)  # AlgoPerf's MNIST validation target, and the README's test accuracy.
TRIALS = 5
SEEDS = 3
SEARCH_SEED = 0
EVALS_PER_EPOCH = 4
ONE_MINUS = "one_minus_"
# Where a space's ranges come from: AlgoPerf's NAdamW space (learning rate 1e-4 to 1e-2,
# 1 - beta_1 from 4e-3 to 0.1, weight decay from 5e-3 to 1, all log) moved to each
# optimizer's known good rates on this MLP (docs/optimizers.md), and a warm-up of 0 to 1 epoch
# of the 10 in place of AlgoPerf's 5% of the budget.
_WARMUP = {"warmup_epochs": {"min": 0.0, "max": 1.0, "scaling": "linear"}}
_ONE_MINUS_BETA_1 = {"one_minus_beta_1": {"min": 0.02, "max": 0.2, "scaling": "log"}}
_ADAM_RATE = {"learning_rate": {"min": 5e-4, "max": 5e-3, "scaling": "log"}}
_DECAY = {"weight_decay": {"min": 1e-3, "max": 0.2, "scaling": "log"}}
SEARCH_SPACES = {
    "adafactor": {
        "learning_rate": {"min": 2e-3, "max": 3e-2, "scaling": "log"},
        **_DECAY,
        **_WARMUP,
    },
    "adam": {**_ADAM_RATE, **_ONE_MINUS_BETA_1, **_WARMUP},
    "adamw": {**_ADAM_RATE, **_ONE_MINUS_BETA_1, **_DECAY, **_WARMUP},
    "gd": {"learning_rate": {"min": 0.05, "max": 0.8, "scaling": "log"}, **_WARMUP},
    "lamb": {
        "learning_rate": {"min": 2e-3, "max": 3e-2, "scaling": "log"},
        **_ONE_MINUS_BETA_1,
        **_DECAY,
        **_WARMUP,
    },
    # Lion's steps are signs: a rate 3-10x below AdamW's and a decay as much above, its authors'.
    "lion": {
        "learning_rate": {"min": 5e-5, "max": 1e-3, "scaling": "log"},
        **_ONE_MINUS_BETA_1,
        "weight_decay": {"min": 1e-2, "max": 1.0, "scaling": "log"},
        **_WARMUP,
    },
    "momentum": {
        "learning_rate": {"min": 0.01, "max": 0.3, "scaling": "log"},
        "one_minus_momentum": {"min": 0.05, "max": 0.5, "scaling": "log"},
        **_WARMUP,
    },
    "muon": {
        **_ADAM_RATE,
        "one_minus_momentum": {"min": 0.02, "max": 0.2, "scaling": "log"},
        **_DECAY,
        **_WARMUP,
    },
    "nadamw": {**_ADAM_RATE, **_ONE_MINUS_BETA_1, **_DECAY, **_WARMUP},
    "schedule_free_adamw": {
        "learning_rate": {"min": 1e-3, "max": 1e-2, "scaling": "log"},
        **_ONE_MINUS_BETA_1,
        **_DECAY,
        **_WARMUP,
    },
}
assert set(SEARCH_SPACES) == set(OPTIMIZERS), "every optimizer needs a search space"


def search_dimensions(space: dict) -> tuple[Dimension, ...]:
    """The sweep's dimensions of a space, a `one_minus_<flag>` one checked as <flag> is."""
    dimensions = []
    for key, spec in space.items():
        flag = key.removeprefix(ONE_MINUS)
        (dimension,) = parse_search_space({flag: spec}, "time_to_target's search space", {})
        dimensions.append(dataclasses.replace(dimension, flag=key))
    return tuple(dimensions)


def trial_points(space: dict, trials: int = TRIALS, seed: int = SEARCH_SEED) -> list[dict]:
    """The first `trials` points of the space, as trainer flags: {flag: value}."""
    points = quasirandom_points(search_dimensions(space), trials, seed, frozenset())
    return [
        {
            key.removeprefix(ONE_MINUS): round(1 - value, 8) if key.startswith(ONE_MINUS) else value
            for key, value in point.items()
        }
        for point in points
    ]


def trial_config(base: TrainConfig, optimizer: str, point: dict) -> TrainConfig:
    """The base config with the optimizer and the point; a constant rate for the optimizers
    that average their weights in place of a decay (Schedule-Free)."""
    schedule = "constant" if optimizer in AVERAGING_OPTIMIZERS else base.lr_schedule
    return dataclasses.replace(base, optimizer=optimizer, lr_schedule=schedule, **point).validate()


@dataclasses.dataclass
class Run:
    """A run to the budget: the first step and training seconds at which validation reached
    each target (None: not within the budget), and the final accuracies (None once diverged)."""

    budget_steps: int
    steps_to: dict[float, int | None]
    seconds_to: dict[float, float | None]
    validation_accuracy: float | None
    test_accuracy: float | None
    diverged_at_step: int | None = None


def evaluation_steps(steps_per_epoch: int, epochs: int) -> list[int]:
    """The steps after which validation runs: EVALS_PER_EPOCH an epoch, each epoch ending one."""
    return [
        round(k * steps_per_epoch / EVALS_PER_EPOCH) for k in range(1, epochs * EVALS_PER_EPOCH + 1)
    ]


def train(strategy, config: TrainConfig, targets: Sequence[float], label: str) -> Run:
    """Trains config.epochs epochs, validating at each of evaluation_steps."""
    trainer = OurTrainer(strategy, config)
    evaluations = evaluation_steps(trainer.steps_per_epoch, config.epochs)
    run = Run(evaluations[-1], dict.fromkeys(targets), dict.fromkeys(targets), None, None)
    done, seconds, accuracy = 0, 0.0, 0.0
    for step in evaluations:
        start = time.perf_counter()
        try:
            trainer.state.train(trainer.batches, step - done)
        except DivergenceError as e:
            logging.info("[time_to_target] %s: diverged at step %d", label, e.step)
            run.diverged_at_step = e.step
            return run
        seconds += time.perf_counter() - start
        done = step
        accuracy = trainer.accuracy("validation")
        for target in targets:
            if run.steps_to[target] is None and accuracy >= target:
                run.steps_to[target], run.seconds_to[target] = step, seconds
    run.validation_accuracy, run.test_accuracy = accuracy, trainer.test_accuracy()
    logging.info(
        "[time_to_target] %s: validation %.2f%%, test %.2f%%, steps to %s: %s",
        label,
        100 * accuracy,
        100 * run.test_accuracy,
        ", ".join(f"{t:.1%}" for t in targets),
        ", ".join(str(run.steps_to[t]) for t in targets),
    )
    return run


def _rank(run: Run, targets: Sequence[float]) -> tuple:
    """Smaller is better: steps to the last target, then to the ones before, then accuracy."""
    steps = [math.inf if run.steps_to[t] is None else run.steps_to[t] for t in targets]
    return (*reversed(steps), -(run.validation_accuracy or -1.0))


def median_to_target(values: list[float | None]) -> float:
    """The median over seeds, a seed that missed the target counting as infinitely slow; of an
    even count, the slower middle one: a time some seed took, and no faster than half the seeds."""
    return statistics.median_high(math.inf if v is None else v for v in values)


def performance_profile(
    times: dict[str, dict[float, float]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """AlgoPerf's performance profile: for each optimizer, the fraction of the targets it
    reached within tau times the fastest optimizer's time to that target, at each tau."""
    targets = {t for by_target in times.values() for t in by_target}
    fastest = {t: min(by_target[t] for by_target in times.values()) for t in targets}
    return {
        name: [
            sum(by_target[t] <= tau * fastest[t] for t in targets if math.isfinite(fastest[t]))
            / len(targets)
            for tau in taus
        ]
        for name, by_target in times.items()
    }


def plot_profiles(times_by_measure: dict[str, dict], path: str) -> None:
    """One panel a measure (steps, seconds): each optimizer's profile against tau."""
    import matplotlib

    matplotlib.use("Agg")  # A file, no display.
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(times_by_measure), figsize=(6 * len(times_by_measure), 4))
    for axis, (measure, times) in zip(figure.axes, times_by_measure.items()):
        ratios = [
            value / min(by_target[t] for by_target in times.values())
            for by_target in times.values()
            for t, value in by_target.items()
            if math.isfinite(value)
        ]
        top = max([1.0, *ratios]) * 1.1
        taus = [1 + (top - 1) * i / 200 for i in range(201)]
        styles = ("-", "--", ":", "-.")
        for i, (name, fractions) in enumerate(performance_profile(times, taus).items()):
            # Profiles often coincide: thinner lines and other dashes on top keep each visible.
            width, style = 4.5 - 0.6 * i, styles[i % len(styles)]
            axis.step(taus, fractions, where="post", label=name, linewidth=width, linestyle=style)
        axis.set(
            xlabel=f"tau: {measure} to the target over the fastest optimizer's",
            ylabel="fraction of targets reached",
            ylim=(-0.03, 1.03),
            title=f"Performance profile by {measure}",
        )
        axis.grid(alpha=0.3)
    figure.axes[0].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _target_name(target: float) -> str:
    return f"{target:.1%}"


def time_to_target(
    optimizers: Sequence[str] = tuple(OPTIMIZERS),
    plot: str | None = None,
    base: TrainConfig = TrainConfig(),
    spaces: dict = SEARCH_SPACES,
    trials: int = TRIALS,
    seeds: int = SEEDS,
    targets: Sequence[float] = TARGETS,
) -> dict:
    """The section: {measure: value} for each optimizer, and the profile drawn to `plot`."""
    strategy = strategies.create_strategy(base.strategy, base.cpu_replicas)
    results, times = {}, {"steps": {}, "seconds": {}}
    for optimizer in optimizers:
        points = trial_points(spaces[optimizer], trials)
        configs = [trial_config(base, optimizer, point) for point in points]
        runs = [
            train(strategy, config, targets, f"{optimizer} trial {i}/{trials}")
            for i, config in enumerate(configs, 1)
        ]
        best = min(range(trials), key=lambda i: _rank(runs[i], targets))
        seeded = [runs[best]] + [
            train(
                strategy,
                dataclasses.replace(configs[best], seed=base.seed + s),
                targets,
                f"{optimizer} best trial, seed {base.seed + s}",
            )
            for s in range(1, seeds)
        ]
        row = f"{optimizer}_"
        for i, (point, run) in enumerate(zip(points, runs)):
            results[f"{row}trial{i}"] = _describe(point, run, targets)
        results[f"{row}best_trial"] = best
        for target in targets:
            name = _target_name(target)
            reached = sum(run.steps_to[target] is not None for run in seeded)
            steps = median_to_target([run.steps_to[target] for run in seeded])
            seconds = median_to_target([run.seconds_to[target] for run in seeded])
            times["steps"].setdefault(optimizer, {})[target] = steps
            times["seconds"].setdefault(optimizer, {})[target] = seconds
            results[f"{row}seeds_reaching_{name}"] = f"{reached} of {seeds}"
            results[f"{row}steps_to_{name}"] = steps if math.isfinite(steps) else "not reached"
            results[f"{row}seconds_to_{name}"] = (
                seconds if math.isfinite(seconds) else "not reached"
            )
        final = [run.test_accuracy for run in seeded if run.test_accuracy is not None]
        if len(final) < seeds:
            results[f"{row}test_accuracy_mean"] = f"{seeds - len(final)} of {seeds} diverged"
        else:
            results[f"{row}test_accuracy_mean"] = statistics.mean(final)
            results[f"{row}test_accuracy_min"] = min(final)
            results[f"{row}test_accuracy_max"] = max(final)
    results["budget_steps"] = runs[0].budget_steps
    if plot:
        plot_profiles(times, plot)
        results["performance_profile_plot"] = plot
    return results


def _describe(point: dict, run: Run, targets: Sequence[float]) -> str:
    """A trial's row: its point, the steps to each target, its final validation accuracy."""
    flags = " ".join(f"{flag}={value:g}" for flag, value in point.items())
    if run.diverged_at_step is not None:
        return f"{flags}: diverged at step {run.diverged_at_step}"
    steps = ", ".join(
        f"{_target_name(t)} at {run.steps_to[t] if run.steps_to[t] is not None else '-'}"
        for t in targets
    )
    return f"{flags}: {steps}; validation {run.validation_accuracy:.2%}"
