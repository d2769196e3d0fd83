"""Sharpness-aware minimization: the closed form, its two modes on 2 replicas, accumulation."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.step.sam import SAM_MODES, sam_gradients
from trainer.step.state import build_train_state

RHO = 0.05


@pytest.mark.parametrize("mode", SAM_MODES)
def test_on_a_quadratic_the_sam_gradient_is_its_closed_form(mode):
    # f(w) = 1/2 w^T A w: the gradient is A w, and SAM's is A (w + rho A w / ||A w||).
    a = np.array([[2.0, 0.5], [0.5, 1.0]])
    w = np.array([1.0, -2.0])

    def gradients_at(offsets):
        at = w if offsets is None else w + offsets[0].numpy()
        return [tf.constant(a @ at)]

    got = sam_gradients(gradients_at, RHO, mode)
    grad = a @ w
    np.testing.assert_allclose(got[0].numpy(), a @ (w + RHO * grad / np.linalg.norm(grad)))


def test_a_loss_scale_is_undone_for_the_perturbation_only():
    w, scale = np.array([3.0, 4.0]), 1024.0
    got = sam_gradients(
        lambda offsets: [tf.constant(scale * (w + (0 if offsets is None else offsets[0])))],
        RHO,
        "global",
        unscale=tf.constant(1 / scale, tf.float64),
    )
    # Perturbed by rho along w, and scaled still: the optimizer unscales it.
    np.testing.assert_allclose(got[0].numpy(), scale * (w + RHO * w / 5.0))


BATCH = 64
CONFIG = TrainConfig(
    hidden_sizes=(32,),
    seed=3,
    optimizer="gd",
    learning_rate=0.5,
    lr_schedule="constant",
    warmup_epochs=0.0,
    batch_size=BATCH,
    sam_rho=RHO,
)


@pytest.fixture(scope="module")
def batches():
    return list(mnist.train_dataset(mnist.load("bundled").train, BATCH, seed=0).take(3))


def train(strategy, config, batches) -> list[np.ndarray]:
    """The trainer's own train state, after a step on each of `batches`: its weights."""
    state = build_train_state(strategy, config, steps_per_epoch=1)
    dataset = tf.data.Dataset.from_tensor_slices(tuple(tf.stack(part) for part in zip(*batches)))
    state.train_loop(iter(strategy.experimental_distribute_dataset(dataset)), len(batches))
    return [v.numpy() for v in state.model.trainable_variables]


def assert_close(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_global_sam_on_two_replicas_is_sam_of_the_whole_batch_on_one_device(batches):
    one = train(strategies.create_strategy("one_device"), CONFIG, batches)
    two = train(strategies.create_strategy("mirrored", cpu_replicas=2), CONFIG, batches)
    assert_close(two, one)
    plain = train(
        strategies.create_strategy("one_device"), dataclasses.replace(CONFIG, sam_rho=0.0), batches
    )
    assert not np.allclose(plain[0], one[0], rtol=1e-4, atol=1e-6)  # SAM did something.


@pytest.mark.slow  # Trains on 2 replicas for seconds; global SAM on 2 keeps the path fast.
def test_per_replica_sam_is_the_mean_of_each_halfs_own_sam_step(batches):
    # With gradient descent, one step moves w by -lr times the applied gradient: on 2 replicas,
    # the mean of each replica's SAM gradient on its half; on one device, each half's alone.
    config = dataclasses.replace(CONFIG, sam_mode="per_replica")
    two = train(strategies.create_strategy("mirrored", cpu_replicas=2), config, batches[:1])
    images, labels = batches[0]
    halves = [
        train(
            strategies.create_strategy("one_device"),
            dataclasses.replace(config, batch_size=BATCH // 2),
            [(images[part], labels[part])],
        )
        for part in (slice(None, BATCH // 2), slice(BATCH // 2, None))
    ]
    assert_close(two, [(a + b) / 2 for a, b in zip(*halves)])
    global_mode = train(strategies.create_strategy("mirrored", cpu_replicas=2), CONFIG, batches[:1])
    assert not np.allclose(two[0], global_mode[0], rtol=1e-5, atol=1e-7)  # The modes differ.


@pytest.mark.slow  # Trains the trainer's state twice, with and without micro-batches.
def test_accumulated_micro_batches_take_the_sam_steps_of_the_whole_batch(batches):
    # Both passes are summed over every micro-batch before the perturbation and the update.
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    for mode in SAM_MODES:
        config = dataclasses.replace(CONFIG, sam_mode=mode)
        assert_close(
            train(strategy, dataclasses.replace(config, grad_accum_steps=4), batches),
            train(strategy, config, batches),
        )
