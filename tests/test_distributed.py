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


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_every_replica_copy_stays_identical_on_different_data(name, train_split):
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    model, optimizer, _ = run(strategy, name, train_split, steps=5)
    state = [optimizer.iterations, *[slot for slots in optimizer.slots for slot in slots]]
    assert len(state) == 1 + len(model.trainable_variables) * len(optimizer.slot_names)
    for variable in [*model.trainable_variables, *state]:
        first, second = replica_copies(variable)
        np.testing.assert_array_equal(first, second, err_msg=variable.name)
    assert int(optimizer.iterations.numpy()) == 5  # Once per step, not once per replica.


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
def test_one_and_two_replicas_take_the_same_steps(train_split):
    one, _, _ = run(strategies.create_strategy("one_device"), "adam", train_split, steps=10)
    two, _, _ = run(
        strategies.create_strategy("mirrored", cpu_replicas=2), "adam", train_split, steps=10
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
