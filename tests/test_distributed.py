"""The real strategies on logical CPU devices: replicas agree, and the step traces once."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from trainer import optimizers
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.step.state import build_train_state

BATCH = 64
CONFIG = TrainConfig(
    hidden_sizes=(32,),
    seed=3,
    learning_rate=1e-2,
    lr_schedule="constant",
    warmup_epochs=0.0,
    batch_size=BATCH,
)


@pytest.fixture(scope="module")
def train_split():
    return mnist.load("bundled").train


def build(strategy, optimizer):
    """The trainer's own train state; `optimizer` is a name, or an instance to use instead."""
    if isinstance(optimizer, str):
        state = build_train_state(
            strategy, dataclasses.replace(CONFIG, optimizer=optimizer), steps_per_epoch=1
        )
    else:
        state = build_train_state(strategy, CONFIG, steps_per_epoch=1, optimizer=optimizer)
    return state.model, state.optimizer, state.train_loop


def run(strategy, optimizer, split, steps):
    model, optimizer, loop = build(strategy, optimizer)
    # experimental_distribute_dataset hands each replica a different half of every batch.
    iterator = iter(
        strategy.experimental_distribute_dataset(mnist.train_dataset(split, BATCH, seed=0))
    )
    loop(iterator, tf.constant(steps))
    return model, optimizer, loop


def replica_copies(variable):
    return [v.numpy() for v in variable.values]


def fast_for(fast, cases):
    """`cases` as pytest params, each but `fast` marked slow: the edit-test loop (`make
    test-fast`) checks one, the whole suite every one."""
    return [
        pytest.param(*(case if isinstance(case, tuple) else (case,)), marks=marks)
        for case in cases
        for marks in [() if case == fast else pytest.mark.slow]
    ]


@pytest.mark.parametrize("name", fast_for("adam", sorted(optimizers.OPTIMIZERS)))
def test_every_replica_copy_stays_identical_on_different_data(name, train_split):
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    model, optimizer, _ = run(strategy, name, train_split, steps=5)
    state = [optimizer.iterations, *[slot for slots in optimizer.slots for slot in slots]]
    slots_per_variable = [optimizer.slot_names_for(v) for v in model.trainable_variables]
    assert len(state) == 1 + sum(map(len, slots_per_variable))
    for variable in [*model.trainable_variables, *state]:
        first, second = replica_copies(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.name)
    assert int(optimizer.iterations.numpy()) == 5  # Once per step, not once per replica.


def test_the_transforms_state_stays_identical_on_every_replica(train_split):
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    config = dataclasses.replace(CONFIG, optimizer="adamw", clip_global_norm=0.1, ema_decay=0.9)
    state = build_train_state(strategy, config, steps_per_epoch=1)
    iterator = iter(
        strategy.experimental_distribute_dataset(mnist.train_dataset(train_split, BATCH, seed=0))
    )
    state.train_loop(iterator, tf.constant(5))
    clip, ema = state.optimizer.transforms[1:]  # After AdamW's own weight decay.
    assert int(clip.clipped_steps.numpy()) == 5  # A limit of 0.1 clips every step here.
    assert int(ema.updates.numpy()) == 5  # The EMA's t: once a step, not once per replica.
    assert all(a is b for a, b in zip(ema.averages, state.ema_model.trainable_variables))
    counts = [clip.clipped_steps, ema.updates]
    for variable in [*state.model.trainable_variables, *ema.averages, *counts]:
        first, second = replica_copies(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.name)


@pytest.mark.parametrize(
    "name, replicas",
    fast_for(("adam", 2), [(n, r) for n in ["gd", "momentum", "adam", "adamw"] for r in [1, 2]]),
)
def test_accumulated_micro_batches_take_the_steps_of_the_whole_batch(name, replicas, train_split):
    # As Keras's and Optax's accumulation tests compare: K micro-batches of B / K, summed, and
    # one batch of B. With a schedule (warm-up and cosine over the 10 steps), which must see
    # one step per update, not one per micro-batch.
    strategy = strategies.create_strategy(
        "mirrored" if replicas > 1 else "one_device", cpu_replicas=replicas
    )
    config = dataclasses.replace(
        CONFIG, optimizer=name, lr_schedule="cosine", warmup_epochs=0.2, epochs=1
    )
    states = {}
    for steps in (1, 4):
        state = build_train_state(
            strategy, dataclasses.replace(config, grad_accum_steps=steps), steps_per_epoch=10
        )
        start = state.model.trainable_variables[0].numpy()
        dataset = mnist.train_dataset(train_split, BATCH, seed=0)
        state.train(iter(strategy.experimental_distribute_dataset(dataset)), 10)
        states[steps] = state
    whole, accumulated = states[1], states[4]
    assert whole.step == accumulated.step == 10  # One update per batch.
    for a, b in zip(whole.model.trainable_variables, accumulated.model.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)
    assert not np.allclose(whole.model.trainable_variables[0].numpy(), start)
    # The metrics count every micro-batch's examples once.
    assert float(whole.train_metrics.count.read_value()) == 10 * BATCH
    assert float(accumulated.train_metrics.count.read_value()) == 10 * BATCH


def test_an_overflow_in_one_micro_batch_skips_the_whole_update(train_split):
    strategy = strategies.create_strategy("one_device")
    config = dataclasses.replace(CONFIG, precision="mixed_float16", grad_accum_steps=2)
    state = build_train_state(strategy, config, steps_per_epoch=1)
    images, labels = next(iter(mnist.train_dataset(train_split, BATCH, seed=0)))
    # The second micro-batch's pixels are beyond float16's range: its gradients are not finite.
    images = tf.concat([images[: BATCH // 2], images[BATCH // 2 :] * 1e6], axis=0)
    start = [v.numpy() for v in state.model.trainable_variables]
    state.train_loop(iter(tf.data.Dataset.from_tensors((images, labels))), tf.constant(1))
    optimizer = state.optimizer
    assert int(optimizer.skipped_steps.numpy()) == 1 and int(optimizer.iterations.numpy()) == 0
    assert state.step == 1  # The batch was taken, though no update was applied.
    assert float(optimizer.loss_scale.numpy()) == 2.0**14  # Halved once, not per micro-batch.
    for before, variable in zip(start, state.model.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())


class UpdateInReplicaContext(optimizers.GradientDescent):
    """The trap: assign from replica context, without summing gradients across replicas."""

    def apply_gradients(self, grads, variables):
        for grad, var in zip(grads, variables):
            var.assign_sub(0.01 * grad)


def test_the_copy_check_catches_updates_from_replica_context(train_split):
    # Without the base class's all-reduce and merge_call, the copies silently drift apart:
    # this is what the test above would catch.
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    model, _, _ = run(strategy, UpdateInReplicaContext(0.01), train_split, steps=3)
    first, second = replica_copies(model.trainable_variables[-1])
    assert not np.array_equal(first, second)


@pytest.mark.slow
# LAMB's trust ratio and Adafactor's RMS are norms of the summed gradient's step, not per replica.
@pytest.mark.parametrize(
    "name", ["adam", "adamw", "lion", "muon", "lamb", "adafactor", "schedule_free_adamw"]
)
def test_one_and_two_replicas_take_the_same_steps(name, train_split):
    one, _, _ = run(strategies.create_strategy("one_device"), name, train_split, steps=10)
    two, _, _ = run(
        strategies.create_strategy("mirrored", cpu_replicas=2), name, train_split, steps=10
    )
    assert len(one.trainable_variables) == len(two.trainable_variables) == 4
    for a, b in zip(one.trainable_variables, two.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.name)


def test_the_train_loop_traces_once(train_split):
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    _, optimizer, loop = build(strategy, "momentum")
    iterator = iter(
        strategy.experimental_distribute_dataset(mnist.train_dataset(train_split, BATCH, seed=0))
    )
    for steps in (1, 3, 2):
        loop(iterator, tf.constant(steps))
    assert loop.experimental_get_tracing_count() == 1
    assert int(optimizer.iterations.numpy()) == 6


@pytest.mark.parametrize(
    "name, replicas, expected",
    [
        ("auto", 1, "OneDeviceStrategy"),
        ("auto", 2, "MirroredStrategy"),
        ("mirrored", 1, "MirroredStrategy"),
        ("one_device", 2, "OneDeviceStrategy"),
    ],
)
def test_strategy_factory(name, replicas, expected):
    strategy = strategies.create_strategy(name, replicas)
    assert type(strategy).__name__ == expected
    if expected == "MirroredStrategy":
        assert strategy.num_replicas_in_sync == replicas


@pytest.mark.parametrize(
    "name, replicas, error",
    [
        ("tpu", 1, "--strategy must be one of"),
        ("auto", 0, "--cpu_replicas must be at least 1"),
        ("mirrored", 4, "--cpu_replicas=4: TensorFlow already started with 2"),
    ],
)
def test_strategy_factory_errors(name, replicas, error):
    with pytest.raises(strategies.StrategyError, match=error):
        strategies.create_strategy(name, replicas)
