"""Ours and Keras's XLA fit side by side, on a tiny model: real traces of both, one round."""

import dataclasses

import pytest

from trainer.bench import keras_profile, step_profile
from trainer.bench import training as bench_training
from trainer.config import TrainConfig

pytestmark = pytest.mark.slow  # Trains for a while.

SMALL = TrainConfig(hidden_sizes=(16,), batch_size=1000)


@pytest.fixture(scope="module")
def results():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            bench_training,
            "bench_config",
            lambda batch_size, **settings: dataclasses.replace(SMALL, **settings),
        )
        measure = bench_training.measure
        patch.setattr(
            bench_training, "measure", lambda workloads, label: measure(workloads, 1, label)
        )
        bench_training.cached_trainer.cache_clear()  # Its trainers are the real, bigger model.
        yield keras_profile.keras_beside_ours(1000)
    bench_training.cached_trainer.cache_clear()


def test_both_sides_are_timed_in_paired_rounds(results):
    assert results["b1000_ours_xla_examples_per_s"] > 0
    assert results["b1000_keras_xla_examples_per_s"] > 0
    assert results["b1000_ours_xla_over_keras_xla"] > 0


@pytest.mark.parametrize("name", ["ours_xla", "keras_xla"])
def test_each_profile_covers_all_its_time_and_finds_an_xla_program(results, name):
    groups = [group for group, _ in step_profile.GROUPS] + [step_profile.OTHER]
    shares = [results[f"b1000_{name}_share_{group}"] for group in groups]
    assert sum(shares) == pytest.approx(1.0)
    # Both compile the step with XLA on any machine: its program is where the matmuls run.
    assert results[f"b1000_{name}_share_xla_forward_backward"] > 0
    assert results[f"b1000_{name}_ms_per_step"] > 0


def test_keras_update_is_inside_its_one_xla_program_and_ours_is_per_variable(results):
    assert results["b1000_keras_xla_share_update"] == 0
    assert results["b1000_ours_xla_share_update"] > 0
