"""Clipping, weight decay and weight EMA: known values, on several replicas, under loss scaling."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import optimizers
from trainer.distribution import strategies
from trainer.optimizers import ClipByGlobalNorm, GradientDescent, WeightEMA

LIMIT = 1.0
# Per replica: the first gradient alone has norm 1.25 > LIMIT; their sum, norm 0.5, does not.
OVER_ALONE = [np.array([[0.75, 1.0]], np.float32), np.array([[-0.45, -0.4]], np.float32)]
# ... and here the sum, norm 2.5, is over the limit too.
OVER_SUMMED = [np.array([[0.75, 1.0]], np.float32), np.array([[0.75, 1.0]], np.float32)]


def step_on_two_replicas(per_replica_grads, **optimizer_kwargs):
    """One step of gradient descent (lr 1) with clipping, replica i contributing gradient i;
    returns the variable's two copies, the optimizer and the variable's start."""
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    start = np.array([[1.0, 2.0]], np.float32)
    with strategy.scope():
        x = tf.Variable(start)
        optimizer = GradientDescent(1.0, transforms=[ClipByGlobalNorm(LIMIT)], **optimizer_kwargs)
        optimizer.build([x])
    grads = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(per_replica_grads[context.replica_id_in_sync_group])
    )

    @tf.function
    def step(grads):
        def replica_step(grad):
            optimizer.apply_gradients([optimizer.scale_loss(grad)], [x])

        strategy.run(replica_step, args=(grads,))

    step(grads)
    return [copy.numpy() for copy in x.values], optimizer, start


@pytest.mark.parametrize("grads", [OVER_ALONE, OVER_SUMMED], ids=["sum-under", "sum-over"])
@pytest.mark.parametrize("loss_scaling", [False, True], ids=["float32", "loss-scaled"])
def test_clipping_clips_the_gradients_summed_across_replicas(grads, loss_scaling):
    copies, optimizer, start = step_on_two_replicas(grads, loss_scaling=loss_scaling)
    summed = grads[0] + grads[1]
    (clipped,), norm = tf.clip_by_global_norm([tf.constant(summed)], LIMIT)
    for copy in copies:
        np.testing.assert_array_equal(copy, start - clipped.numpy())
    # The logged norm is the norm before clipping; the counter says whether it clipped.
    assert float(optimizer.grad_norm.numpy()) == pytest.approx(float(norm))
    (clip,) = optimizer.transforms
    assert int(clip.clipped_steps.numpy()) == int(float(norm) > LIMIT)
    # Clipping each replica's gradient before the sum would have moved x elsewhere.
    per_replica = sum(tf.clip_by_global_norm([tf.constant(g)], LIMIT)[0][0] for g in grads)
    assert not np.allclose(per_replica.numpy(), clipped.numpy())


def test_the_ema_of_two_steps_by_hand():
    # GD with lr 0.5 from x = 1, gradients 1 then 2: x = 0.5, then -0.5. With decay 0.9 the
    # average starts at 1: 0.9 * 1 + 0.1 * 0.5 = 0.95, then 0.9 * 0.95 + 0.1 * -0.5 = 0.805.
    x = tf.Variable([1.0])
    ema = WeightEMA(0.9)
    optimizer = GradientDescent(0.5, transforms=[ema])
    averages = []
    for g in (1.0, 2.0):
        optimizer.apply_gradients([tf.constant([g])], [x])
        averages.append(float(ema.averages[0][0]))
    assert x.numpy()[0] == -0.5
    assert averages == pytest.approx([0.95, 0.805], abs=1e-7)


def test_a_step_skipped_for_an_overflow_leaves_the_average_alone():
    x = tf.Variable([1.0, 2.0])
    ema = WeightEMA(0.5)
    optimizer = optimizers.Adam(0.1, loss_scaling=True, transforms=[ema])
    optimizer.build([x])
    optimizer.apply_gradients([optimizer.scale_loss(tf.constant([1.0, 1.0]))], [x])
    before = ema.averages[0].numpy().copy()
    optimizer.apply_gradients([tf.constant([np.inf, 1.0])], [x])
    np.testing.assert_array_equal(ema.averages[0].numpy(), before)
    assert int(optimizer.skipped_steps) == 1


def test_the_averages_can_be_another_models_weights():
    weights, other = tf.Variable([[1.0, 2.0]]), tf.Variable([[0.0, 0.0]])
    ema = WeightEMA(0.5, averages=[other])
    GradientDescent(1.0, transforms=[ema]).apply_gradients([tf.constant([[2.0, 2.0]])], [weights])
    # Built from the weights (1, 2), then averaged with them after the step (-1, 0).
    np.testing.assert_array_equal(other.numpy(), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="shapes"):
        WeightEMA(0.5, averages=[tf.Variable([0.0])]).build([weights])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5])
def test_a_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        WeightEMA(decay)


def test_the_ema_round_trips_through_a_checkpoint(tmp_path):
    def make():
        x = tf.Variable([1.0, 2.0])
        optimizer = optimizers.AdamW(
            0.1, transforms=[ClipByGlobalNorm(0.5), WeightEMA(0.9)], decays=lambda v: True
        )
        optimizer.build([x])
        return x, optimizer

    x, optimizer = make()
    for g in ([1.0, -1.0], [0.25, 2.0]):
        optimizer.apply_gradients([tf.constant(g)], [x])
    path = tf.train.Checkpoint(x=x, optimizer=optimizer).save(str(tmp_path / "ckpt"))
    x2, restored = make()
    tf.train.Checkpoint(x=x2, optimizer=restored).restore(path).assert_consumed()
    for a, b in zip(optimizer.transforms, restored.transforms):
        for state_a, state_b in zip(a.variables, b.variables):
            np.testing.assert_array_equal(state_a.numpy(), state_b.numpy())
    for model_x, opt in ((x, optimizer), (x2, restored)):
        opt.apply_gradients([tf.constant([3.0, 0.5])], [model_x])
    np.testing.assert_array_equal(x.numpy(), x2.numpy())
    np.testing.assert_array_equal(
        optimizer.transforms[-1].averages[0].numpy(), restored.transforms[-1].averages[0].numpy()
    )


@pytest.mark.parametrize("xla_update", [True, False])
def test_decay_clipping_and_ema_compose_as_their_equations_say(xla_update):
    # AdamW with a decay of 0.1 on the matrix only, clipping to 1 and an EMA of 0.5, one step.
    w, b = tf.Variable([[3.0, 4.0]]), tf.Variable([1.0])
    ema = WeightEMA(0.5)
    optimizer = optimizers.AdamW(
        0.1, weight_decay=0.1, transforms=[ClipByGlobalNorm(1.0), ema], xla_update=xla_update
    )
    optimizer.apply_gradients([tf.constant([[6.0, 8.0]]), tf.constant([0.0])], [w, b])
    # Adam's first step moves each coordinate by lr against its gradient's sign, whatever the
    # (clipped) size; the decay shrinks w first: w * (1 - 0.1 * 0.1) - 0.1.
    np.testing.assert_allclose(w.numpy(), [[3.0 * 0.99 - 0.1, 4.0 * 0.99 - 0.1]], rtol=1e-6)
    np.testing.assert_array_equal(b.numpy(), [1.0])  # No gradient, no decay: a bias.
    np.testing.assert_allclose(ema.averages[0].numpy(), (w.numpy() + [[3.0, 4.0]]) / 2, rtol=1e-6)
    assert float(optimizer.grad_norm) == pytest.approx(10.0)
