"""The optimizers bench section on a tiny model: what it reports, and how it summarizes runs."""

import dataclasses

import pytest

from trainer.bench import optimizers as bench_optimizers
from trainer.bench.optimizers import Recipe, Run
from trainer.bench.training import OurTrainer
from trainer.config import TrainConfig
from trainer.distribution import strategies

# 50 steps an epoch of a small model: a run takes a few seconds.
TINY = TrainConfig(hidden_sizes=(32,), batch_size=1000, epochs=1, warmup_epochs=0.0)


@pytest.mark.slow  # Trains a dozen short runs in this process.
def test_the_section_sweeps_then_runs_seeds_at_the_best_rate(monkeypatch):
    trained = []

    def train(strategy, config, label):
        trained.append(config)
        return train_for_real(strategy, config, label)

    train_for_real = bench_optimizers.train
    monkeypatch.setattr(bench_optimizers, "train", train)
    recipes = (
        Recipe("default"),
        Recipe("adam_ema", {"ema_decay": 0.9}, (1e-3, 1e-2), max_seeds=1),
    )
    results = bench_optimizers.optimizers(recipes, seeds=2, base=TINY)

    # default: 2 seeds, unswept; adam_ema: 2 rates, and its best rate's seed-0 run is its seed.
    assert len(trained) == 4 and len(set(trained)) == 4
    assert results["default_learning_rate"] == TINY.learning_rate
    assert not any(key.startswith("default_lr") for key in results)
    swept = {rate: results[f"adam_ema_lr{rate:g}_validation_accuracy"] for rate in (1e-3, 1e-2)}
    assert results["adam_ema_learning_rate"] == max(swept, key=swept.get)
    assert results["adam_ema_best_lr_at_sweep_edge"] is True
    assert (results["default_seeds"], results["adam_ema_seeds"]) == (2, 1)
    for name in ("default", "adam_ema"):
        mean = results[f"{name}_test_accuracy_mean"]
        assert 0.5 < results[f"{name}_test_accuracy_min"] <= mean
        assert mean <= results[f"{name}_test_accuracy_max"] < 0.985
        assert results[f"{name}_seconds_per_epoch"] > 0
    assert results["default_epochs_to_98.5%"] == "not in 1 (0 of 2 seeds)"
    assert results["adam_ema_epochs_to_98.5%"] == "not in 1 (0 of 1 seeds)"
    assert results["adam_ema_seconds_per_epoch_over_default"] > 0
    # Only recipes run with every seed count for the goals; no recipe reached 98.5%.
    assert results["best_recipe"] == "default"
    assert results["best_recipe_test_accuracy_mean"] == results["default_test_accuracy_mean"]
    assert results["goal_best_mean_of_2_seeds_ge_98.8%"] is False
    assert not any(key.startswith("fastest") for key in results)


@pytest.mark.slow  # Trains an epoch of the bench's trainer.
def test_our_trainer_scores_the_averaged_weights_with_an_ema():
    # Decay 0.99 over 50 steps: the averages are still mostly the initial weights.
    config = dataclasses.replace(TINY, ema_decay=0.99)
    trainer = OurTrainer(strategies.create_strategy("one_device"), config)
    trainer.run()
    averaged = trainer.state.evaluate(*trainer.inputs.eval_set("test"), averaged=True)
    trained = trainer.state.evaluate(*trainer.inputs.eval_set("test"))
    assert trainer.test_accuracy() == averaged["accuracy"] < trained["accuracy"]


def test_a_summary_takes_the_latest_seed_to_the_target_and_counts_divergence():
    seconds = [2.0, 4.0, 3.0]
    reached = [Run([0.97, 0.986, 0.99], 0.99, seconds), Run([0.984, 0.985, 0.987], 0.98, seconds)]
    summary = bench_optimizers._summarize(reached, reached, epochs=3)
    assert summary == pytest.approx(
        {
            "test_accuracy_mean": 0.9885,
            "test_accuracy_min": 0.987,
            "test_accuracy_max": 0.99,
            "epochs_to_98.5%": 2,
            "seconds_to_98.5%": 2 * 3.0,  # At the median epoch.
            "seconds_per_epoch": 3.0,
        }
    )
    diverged = Run([0.98], None, [1.0], diverged_at_step=77)
    summary = bench_optimizers._summarize([reached[0], diverged], [reached[0], diverged], 3)
    assert summary["test_accuracy_mean"] == "1 of 2 seeds diverged"
    assert summary["epochs_to_98.5%"] == "not in 3 (1 of 2 seeds)"
    assert summary["seconds_per_epoch"] == 2.5


@pytest.mark.slow  # Two trainings, one with SAM's two passes.
def test_the_sam_section_compares_its_recipes_without_the_optimizer_goals():
    recipes = (Recipe("adam"), Recipe("adam_sam_noise", {"sam_rho": 0.05, "label_noise": 0.2}))
    results = bench_optimizers.sam(recipes, seeds=1, base=TINY)
    for name in ("adam", "adam_sam_noise"):
        assert 0.5 < results[f"{name}_test_accuracy_mean"] <= 1.0
        assert results[f"{name}_seconds_per_epoch"] > 0
    assert results["adam_sam_noise_seconds_per_epoch_over_adam"] > 0
    assert not any(key.startswith(("goal_", "best_", "fastest_")) for key in results)
