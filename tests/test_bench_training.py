"""The training benchmark's arithmetic and harness, and its sections on a tiny model."""

import dataclasses
import itertools

import pytest
import tensorflow as tf

from trainer import optimizers
from trainer.bench import keras_profile, step_profile
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


def _keras_epoch(keras: bench_training.KerasTrainer) -> int:
    """Steps one run() trains, from the optimizer's counter."""
    before = int(keras.model.optimizer.iterations)
    keras.run()
    return int(keras.model.optimizer.iterations) - before


@pytest.mark.parametrize("feed", ["numpy", "dataset"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_a_keras_peer_trains_an_epoch_with_each_feed_and_jit_compile(feed, jit_compile):
    # steps_per_execution 7 does not divide the 50 steps: fit runs the remainder as well.
    keras = bench_training.KerasTrainer(SMALL, 7, feed, jit_compile)
    assert keras.steps_per_epoch == 50 and keras.work == 50_000
    assert _keras_epoch(keras) == 50
    assert keras.model.jit_compile is jit_compile
    assert keras.test_accuracy() > 0.5


def test_a_keras_peer_on_tf_data_reshuffles_every_epoch():
    keras = bench_training.KerasTrainer(SMALL, 1, "dataset")
    first, second = ([int(y) for _, y in keras.dataset.take(1).unbatch()] for _ in range(2))
    assert sorted(first) != first and first != second


def test_a_keras_peer_refuses_an_unknown_feed():
    with pytest.raises(ValueError, match="feed must be one of"):
        bench_training.KerasTrainer(SMALL, 1, "generator")


def test_screening_keeps_keras_default_and_each_groups_fastest(monkeypatch):
    # Fake rates: steps_per_execution 10 fastest without XLA, 1 with it.
    monkeypatch.setattr(bench_training, "KERAS_STEPS_PER_EXECUTION", (1, 10))
    monkeypatch.setattr(bench_training, "bench_config", lambda batch_size: SMALL)
    speed = {(1, False): 1.0, (10, False): 2.0, (1, True): 4.0, (10, True): 3.0}

    def measure(workloads, rounds, label):
        assert rounds == 1 and len(workloads) == 8
        return bench_training.Rates(
            {
                name: [speed[keras.steps_per_execution, keras.model.jit_compile]]
                for name, keras in workloads.items()
            }
        )

    monkeypatch.setattr(bench_training, "measure", measure)
    chosen = bench_training.strongest_keras(1000)
    assert set(chosen) == {
        "keras_numpy_spe1",
        "keras_numpy_spe10",
        "keras_numpy_spe1_xla",
        "keras_dataset_spe10",
        "keras_dataset_spe1_xla",
    }
    assert chosen["keras_dataset_spe1_xla"].feed == "dataset"


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
        bench_training,
        "measure",
        lambda workloads, label, rounds=None: measure(workloads, 1, label),
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


def test_throughput_sets_ours_against_keras_best_of_every_feed_and_jit_compile(small_sections):
    results = small_sections.throughput()
    # With one steps_per_execution, each of the four feed and jit_compile pairs is timed.
    timed = {
        bench_training.keras_name(feed, 1, jit_compile)
        for feed in ("numpy", "dataset")
        for jit_compile in (False, True)
    }
    assert {name for name in timed if f"b1000_{name}_examples_per_s" in results} == timed
    best = results["b1000_keras_best"]
    assert best in timed and results["b1000_keras_best_spe"] == 1
    assert results["b1000_ours_over_keras_best"] > 0
    assert results["b1000_ours_over_keras_default"] > 0
    others = timed - {best, bench_training.KERAS_DEFAULT}
    assert {name for name in others if f"b1000_ours_over_{name}" in results} == others


def test_profile_keras_times_and_traces_ours_and_keras_xla_fit(small_sections):
    results = keras_profile.keras_beside_ours(1000)
    assert results["b1000_ours_xla_over_keras_xla"] > 0
    groups = [group for group, _ in step_profile.GROUPS] + [step_profile.OTHER]
    for name in ("ours_xla", "keras_xla"):
        assert results[f"b1000_{name}_examples_per_s"] > 0
        assert results[f"b1000_{name}_ms_per_step"] > 0
        shares = [results[f"b1000_{name}_share_{group}"] for group in groups]
        assert sum(shares) == pytest.approx(1.0)
        # Each compiles its whole step, the update inside, into one XLA program on any machine.
        assert results[f"b1000_{name}_share_update"] == 0
    assert results["b1000_ours_xla_share_xla_whole_step"] > 0
    assert results["b1000_keras_xla_share_xla_forward_backward"] > 0  # Another's XLA program.
