"""The training benchmark's arithmetic and harness, and its sections on a tiny model."""

import dataclasses
import itertools

import pytest
import tensorflow as tf

from trainer import optimizers
from trainer.bench import training as bench_training
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.step.machine_fit import uses_xla

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 50 steps an epoch of a small model.
SMALL = TrainConfig(hidden_sizes=(16,), batch_size=1000)


def test_flops_per_example_matches_the_hand_count():
    # forward 2*(784*700 + 700*500 + 500*10), weight grads the same, input grads of layers 2-3.
    assert bench_training.flops_per_example() == 1_807_600 + 1_807_600 + 710_000


class _Fake:
    def __init__(self, work, seconds):
        self.work, self.seconds = work, itertools.cycle(seconds)

    def run(self):
        return next(self.seconds)


def test_measure_skips_the_warm_up_run_and_pairs_rounds_for_ratios():
    # The first runs (100 s, warm-ups) are left out. Load from elsewhere slows rounds 2 and 3
    # unevenly; within each round a is at least twice as fast as b.
    rates = bench_training.measure(
        {"a": _Fake(60, [100, 6, 30, 10]), "b": _Fake(60, [100, 12, 60, 30])}, rounds=3
    )
    assert rates == {"a": [10.0, 2.0, 6.0], "b": [5.0, 1.0, 2.0]}
    assert rates.median("a") == 6.0
    # Paired ratios 2, 2, 3; the ratio of the medians (6 / 2 = 3) would overstate it.
    assert rates.ratio("a", "b") == 2.0


def test_time_to_accuracy_reports_a_target_missed_and_the_best_accuracy():
    config = dataclasses.replace(SMALL, epochs=1, warmup_epochs=0.0)
    results = bench_training.time_to_accuracy(config)
    for name in ("ours", "keras"):
        assert results[f"{name}_epochs_to_98.5%"] == "not in 1"
        assert results[f"{name}_seconds_for_1_epochs"] > 0
        assert 0.5 < results[f"{name}_best_test_accuracy"] < bench_training.TARGET_ACCURACY
    assert "keras_seconds_over_ours" not in results


def test_our_trainer_on_two_replicas_trains_an_epoch_of_whole_batches():
    # Calls of 20 steps, as the trainer runs them: 20 + 20 + 10 make the epoch's 50.
    trainer = bench_training.OurTrainer(
        strategies.create_strategy("mirrored", 2), dataclasses.replace(SMALL, steps_per_loop=20)
    )
    assert trainer.replicas == 2
    assert trainer.steps_per_epoch == 50 and trainer.work == 50_000
    assert int(trainer.state.optimizer.iterations.numpy()) == 0
    trainer.run()
    assert int(trainer.state.optimizer.iterations.numpy()) == 50
    assert trainer.test_accuracy() > 0.5


@pytest.mark.parametrize("optimizer", ["gd", "adam"])
def test_a_fixed_batch_loop_trains_as_many_examples_as_an_epoch(optimizer, monkeypatch):
    created = []

    def create(*args, **kwargs):  # The loop's optimizer, kept to read its step counter.
        created.append(create_optimizer(*args, **kwargs))
        return created[-1]

    create_optimizer = optimizers.create
    monkeypatch.setattr(optimizers, "create", create)
    yardstick = bench_training.FixedBatchLoop(SMALL, optimizer)
    [loop_optimizer] = created
    assert yardstick.steps == 50 and yardstick.work == 50_000
    first = float(yardstick.loop(tf.constant(1)))
    yardstick.run()
    assert int(loop_optimizer.iterations) == 1 + 50  # run() is an epoch's 50 steps.
    assert float(yardstick.loop(tf.constant(1))) < first  # 51 steps on one batch fit it.


def _xla_compiled_functions(function) -> set[str]:
    """Names of the functions a tf.function's graph calls with XLA, at any depth."""
    library = function.get_concrete_function().graph.as_graph_def().library.function
    return {
        each.signature.name
        for each in library
        if each.attr["_XlaMustCompile"].b  # Set by tf.function(jit_compile=True).
    }


@pytest.mark.parametrize("jit_compile", ["true", "false"])
def test_a_fixed_batch_loop_compiles_forward_and_backward_as_the_trainer_would(jit_compile):
    config = dataclasses.replace(SMALL, jit_compile=jit_compile)
    yardstick = bench_training.FixedBatchLoop(config, "gd")
    loop = tf.function(lambda: yardstick.loop(tf.constant(1)))
    compiled = _xla_compiled_functions(loop)
    assert any("update" in name or "rule" in name for name in compiled), compiled  # xla_update
    assert any("gradients" in name for name in compiled) == (jit_compile == "true"), compiled


@pytest.fixture
def small_sections(monkeypatch):
    """The sections at one batch size of SMALL, with one round of each measurement."""
    monkeypatch.setattr(bench_training, "BATCH_SIZES", (1000,))
    monkeypatch.setattr(bench_training, "KERAS_STEPS_PER_EXECUTION", (1,))
    monkeypatch.setattr(
        bench_training,
        "bench_config",
        lambda batch_size, **settings: dataclasses.replace(SMALL, **settings),
    )
    measure = bench_training.measure
    monkeypatch.setattr(
        bench_training, "measure", lambda workloads, label: measure(workloads, 1, label)
    )
    bench_training.cached_trainer.cache_clear()  # Its trainers are the real, bigger model.
    yield bench_training
    bench_training.cached_trainer.cache_clear()


def test_ceiling_sets_ours_and_the_fixed_batch_loop_against_the_matmul_chain(small_sections):
    results = small_sections.ceiling()
    assert results["b1000_matmul2048_gflop_per_s"] > 0
    for name in ("ours", "fixed_batch_adam"):
        achieved = results[f"b1000_{name}_examples_per_s"] * results["mflop_per_example"] / 1e3
        assert results[f"b1000_{name}_gflop_per_s"] == pytest.approx(achieved, rel=1e-3)
        assert results[f"b1000_{name}_over_matmul"] > 0
    assert isinstance(results["goal_b1000_ours_over_matmul_ge_0.5"], bool)


def test_throughput_sets_the_default_against_the_other_jit_compile(small_sections):
    results = small_sections.throughput()
    chose = "true" if uses_xla("auto") else "false"
    other = "false" if chose == "true" else "true"
    assert results["b1000_ours_jit_compile_auto_chose"] == chose
    assert results[f"b1000_ours_over_jit_compile_{other}"] > 0
    assert results["b1000_ours_examples_per_s"] > 0
    assert isinstance(results["goal_default_within_3%_of_other_jit_compile"], bool)
