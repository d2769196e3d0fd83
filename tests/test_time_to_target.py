"""The time_to_target bench section: its trials are the sweep's points, its performance profile
counts what AlgoPerf's does, and on a tiny model and budget its table has every row."""

import json
import math

import pytest

from launch.sweep_plan import plan_sweep
from tests.toolkit import run_module
from trainer.bench import time_to_target
from trainer.bench.time_to_target import Run
from trainer.choices import OPTIMIZERS
from trainer.config import TrainConfig

# 50 steps an epoch of a small model: a run of 2 epochs takes a few seconds.
TINY = TrainConfig(hidden_sizes=(32,), batch_size=1000, epochs=2, warmup_epochs=0.0)


def sweep_points(tmp_path, optimizer: str, space: dict, trials: int) -> list[dict]:
    """The points `python -m launch.sweep --search=<space> --trials=N -- --optimizer=..`
    plans, as numbers."""
    (tmp_path / "space.json").write_text(json.dumps(space))
    sweep = plan_sweep(
        [],
        str(tmp_path / "sweep"),
        search=str(tmp_path / "space.json"),
        trials=trials,
        trainer_args=[f"--optimizer={optimizer}"],
    )
    return [{flag: value.hparam for flag, value in run.values.items()} for run in sweep.runs]


def test_the_trials_are_the_sweeps_points(tmp_path):
    space = time_to_target.SEARCH_SPACES["adafactor"]  # Trainer flags only.
    assert time_to_target.trial_points(space, 5) == sweep_points(tmp_path, "adafactor", space, 5)


def test_a_one_minus_dimension_draws_the_sweeps_points_of_one_minus_the_flag(tmp_path):
    space = time_to_target.SEARCH_SPACES["nadamw"]
    assert list(space)[1] == "one_minus_beta_1"
    # The same range given as beta_1 itself: the sweep draws the same coordinates.
    as_flags = {key.removeprefix("one_minus_"): spec for key, spec in space.items()}
    swept = sweep_points(tmp_path, "nadamw", as_flags, 5)
    trials = time_to_target.trial_points(space, 5)
    assert [t["beta_1"] for t in trials] == pytest.approx([1 - s["beta_1"] for s in swept])
    assert [{**t, "beta_1": 0} for t in trials] == [{**s, "beta_1": 0} for s in swept]
    assert all(0.8 < t["beta_1"] < 0.98 for t in trials)


def test_every_optimizers_trials_are_configs_the_trainer_takes():
    for optimizer in OPTIMIZERS:
        for point in time_to_target.trial_points(time_to_target.SEARCH_SPACES[optimizer]):
            config = time_to_target.trial_config(TrainConfig(), optimizer, point)
            assert config.optimizer == optimizer
            # Schedule-Free averages in place of a decay: a constant rate, or it is refused.
            constant = optimizer == "schedule_free_adamw"
            assert config.lr_schedule == ("constant" if constant else "cosine")


def test_validation_runs_four_times_an_epoch_and_at_each_epochs_end():
    steps = time_to_target.evaluation_steps(390, 10)
    assert len(steps) == 40 and steps[:4] == [98, 195, 292, 390] and steps[-1] == 3900
    assert steps == sorted(set(steps))


def test_the_performance_profile_counts_targets_within_tau_of_the_fastest():
    inf = math.inf
    times = {
        "a": {0.97: 100, 0.985: 400},
        "b": {0.97: 200, 0.985: 300},
        "c": {0.97: 150, 0.985: inf},
        "d": {0.97: inf, 0.985: inf},
    }
    profile = time_to_target.performance_profile(times, [1.0, 1.3, 1.5, 2.0, 100.0])
    assert profile == {
        "a": [0.5, 0.5, 1.0, 1.0, 1.0],  # Fastest to 97%; 400 / 300 = 1.33 to 98.5%.
        "b": [0.5, 0.5, 0.5, 1.0, 1.0],  # Fastest to 98.5%; 200 / 100 = 2 to 97%.
        "c": [0.0, 0.0, 0.5, 0.5, 0.5],  # 1.5 to 97%; never 98.5%.
        "d": [0.0] * 5,
    }
    # A target nobody reaches still counts in every optimizer's fraction.
    unreached = time_to_target.performance_profile({"a": {1: 5, 2: inf}, "b": {1: 10, 2: inf}}, [2])
    assert unreached == {"a": [0.5], "b": [0.5]}


def test_the_best_trial_is_fastest_to_the_last_target_then_the_first_then_most_accurate():
    def run(steps_97, steps_985, accuracy):
        return Run(100, {0.97: steps_97, 0.985: steps_985}, {}, accuracy, accuracy)

    runs = [
        run(50, None, 0.984),
        run(75, 100, 0.986),
        run(25, 100, 0.985),  # Ties to 98.5%; first to 97%.
        run(None, None, 0.96),
    ]
    rank = [time_to_target._rank(r, time_to_target.TARGETS) for r in runs]
    assert sorted(range(4), key=rank.__getitem__) == [2, 1, 0, 3]
    assert time_to_target.median_to_target([300, None, 100]) == 300
    assert time_to_target.median_to_target([None, None, 100]) == math.inf
    assert time_to_target.median_to_target([100, 200]) == 200
    assert time_to_target.median_to_target([100, None]) == math.inf


@pytest.mark.slow  # Trains 6 short runs in this process: more than a few seconds.
def test_the_section_tunes_then_seeds_and_reports_every_row(tmp_path, monkeypatch):
    trained = []

    def train(strategy, config, targets, label):
        trained.append(config)
        return train_for_real(strategy, config, targets, label)

    train_for_real = time_to_target.train
    monkeypatch.setattr(time_to_target, "train", train)
    plot = tmp_path / "profile.png"
    # 0.5 is reached within the first quarter epoch's 12 steps or soon after; 0.999 never.
    targets = (0.5, 0.999)
    results = time_to_target.time_to_target(
        ("adam", "schedule_free_adamw"), str(plot), base=TINY, trials=2, seeds=2, targets=targets
    )

    # Per optimizer 2 trials, then the best's other seed: its seed 0 is the best trial's run.
    assert len(trained) == 6 and len(set(trained)) == 6
    assert [c.seed for c in trained] == [0, 0, 1, 0, 0, 1]
    steps = time_to_target.evaluation_steps(50, 2)
    assert results["budget_steps"] == 100 == steps[-1]
    for optimizer, points in (
        (o, time_to_target.trial_points(time_to_target.SEARCH_SPACES[o], 2))
        for o in ("adam", "schedule_free_adamw")
    ):
        best = results[f"{optimizer}_best_trial"]
        assert trained[3 * (optimizer != "adam") + 2].learning_rate == points[best]["learning_rate"]
        for trial, point in enumerate(points):
            assert results[f"{optimizer}_trial{trial}"].startswith(
                f"learning_rate={point['learning_rate']:g} "
            )
        assert results[f"{optimizer}_seeds_reaching_50.0%"] == "2 of 2"
        assert results[f"{optimizer}_steps_to_50.0%"] in steps
        assert 0 < results[f"{optimizer}_seconds_to_50.0%"]
        assert results[f"{optimizer}_seeds_reaching_99.9%"] == "0 of 2"
        assert results[f"{optimizer}_steps_to_99.9%"] == "not reached"
        assert results[f"{optimizer}_seconds_to_99.9%"] == "not reached"
        low, mean, high = (
            results[f"{optimizer}_test_accuracy_{m}"] for m in ("min", "mean", "max")
        )
        assert 0.5 < low <= mean <= high < 0.999
    assert results["performance_profile_plot"] == str(plot)
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow  # Starts the bench.
def test_an_unknown_optimizer_is_refused_in_one_line(tmp_path):
    result = run_module(
        "trainer.bench",
        "--sections=time_to_target",
        "--time_to_target_optimizers=adam,sgd",
        f"--time_to_target_plot={tmp_path / 'profile.png'}",
    )
    assert result.returncode == 1
    # absl's flag error, then its line pointing at --helpfull.
    error = result.stderr.strip().splitlines()[-2]
    assert error.startswith("FATAL Flags parsing error: flag --time_to_target_optimizers=")
    assert "must name optimizers of: adafactor, adam, adamw" in error
    assert list(tmp_path.iterdir()) == []
