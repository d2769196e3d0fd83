"""Clipping, weight decay and weight EMA: known values, on several replicas, under loss scaling."""

import math

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


def warmed_up_average(decay, start, weights):
    """The EMA by hand: from `start`, d_t = min(decay, (1 + t) / (10 + t)) at step t."""
    average = start
    for t, w in enumerate(weights, start=1):
        d = min(decay, (1 + t) / (10 + t))
        average = d * average + (1 - d) * w
    return average


def test_the_ema_of_five_steps_by_hand():
    # GD with lr 0.5 from x = 1, gradients 1, 2, -1, 0.5, 4: x = 0.5, -0.5, 0, -0.25, -2.25.
    # With decay 0.3 the warm-up's d_t is 2/11 and 3/12, then 4/13 > 0.3 caps it: by hand,
    # 2/11 * 1 + 9/11 * 0.5 = 0.5909..., then 0.25 * 0.5909 + 0.75 * -0.5 = -0.2273..., ...
    x = tf.Variable([1.0])
    ema = WeightEMA(0.3)
    optimizer = GradientDescent(0.5, transforms=[ema])
    weights, averages = [], []
    for g in (1.0, 2.0, -1.0, 0.5, 4.0):
        optimizer.apply_gradients([tf.constant([g])], [x])
        weights.append(float(x[0]))
        averages.append(float(ema.averages[0][0]))
    assert weights == [0.5, -0.5, 0.0, -0.25, -2.25]
    assert averages[0] == pytest.approx(6.5 / 11, rel=1e-6)
    want = [warmed_up_average(0.3, 1.0, weights[:t]) for t in range(1, 6)]
    assert averages == pytest.approx(want, rel=1e-6)
    assert averages[1] == pytest.approx(0.25 * (2 / 11 + 4.5 / 11) - 0.75 * 0.5, rel=1e-6)
    assert int(ema.updates) == 5


def test_the_average_forgets_the_initial_weights():
    # x jumps from 1000 to 0 at the first step and stays. A fixed decay of 0.9999 would keep
    # 1000 * 0.9999^50 = 995 of the start after 50 steps; the warm-up keeps 10! 51! / 60!.
    x = tf.Variable([1000.0])
    ema = WeightEMA(0.9999)
    optimizer = GradientDescent(1.0, transforms=[ema])
    optimizer.apply_gradients([tf.constant([1000.0])], [x])
    for _ in range(49):
        optimizer.apply_gradients([tf.constant([0.0])], [x])
    kept = math.factorial(10) * math.factorial(51) / math.factorial(60)
    assert kept < 1e-9
    assert float(ema.averages[0][0]) == pytest.approx(1000.0 * kept, rel=1e-4)


def test_a_step_skipped_for_an_overflow_leaves_the_average_alone():
    x = tf.Variable([1.0, 2.0])
    ema = WeightEMA(0.5)
    optimizer = optimizers.Adam(0.1, loss_scaling=True, transforms=[ema])
    optimizer.build([x])
    start = x.numpy().copy()
    optimizer.apply_gradients([optimizer.scale_loss(tf.constant([1.0, 1.0]))], [x])
    before, first = ema.averages[0].numpy().copy(), x.numpy().copy()
    optimizer.apply_gradients([tf.constant([np.inf, 1.0])], [x])
    np.testing.assert_array_equal(ema.averages[0].numpy(), before)
    assert int(optimizer.skipped_steps) == 1
    assert int(ema.updates) == 1  # t counts the steps applied, as Adam's bias correction does.
    optimizer.apply_gradients([optimizer.scale_loss(tf.constant([1.0, 1.0]))], [x])
    np.testing.assert_allclose(
        ema.averages[0].numpy(), warmed_up_average(0.5, start, [first, x.numpy()]), rtol=1e-6
    )


def test_the_averages_can_be_another_models_weights():
    weights, other = tf.Variable([[1.0, 2.0]]), tf.Variable([[0.0, 0.0]])
    ema = WeightEMA(0.5, averages=[other])
    GradientDescent(1.0, transforms=[ema]).apply_gradients([tf.constant([[2.0, 2.0]])], [weights])
    # Built from the weights (1, 2), then averaged with them after the step (-1, 0), d_1 = 2/11.
    np.testing.assert_allclose(other.numpy(), [[-7 / 11, 4 / 11]], rtol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        WeightEMA(0.5, averages=[tf.Variable([0.0])]).build([weights])


def test_the_ema_counts_each_step_once_on_two_replicas():
    # In a compiled step on 2 replicas, t is read after this step's increment, once a step.
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    with strategy.scope():
        x = tf.Variable([[1.0, 2.0]])
        ema = WeightEMA(0.9)
        optimizer = GradientDescent(0.5, transforms=[ema])
        optimizer.build([x])

    @tf.function
    def step():
        strategy.run(lambda: optimizer.apply_gradients([tf.constant([[1.0, -1.0]])], [x]))

    weights = []
    for _ in range(3):
        step()
        weights.append(x.values[0].numpy())
    want = warmed_up_average(0.9, np.array([[1.0, 2.0]]), weights)
    for updates, average in zip(ema.updates.values, ema.averages[0].values):
        assert int(updates) == 3
        np.testing.assert_allclose(average.numpy(), want, rtol=1e-6)


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
    # AdamW with a decay of 0.1 on the matrix only, clipping to 1 and an EMA, one step.
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
    np.testing.assert_allclose(
        ema.averages[0].numpy(),
        (9 * w.numpy() + [[6.0, 8.0]]) / 11,
        rtol=1e-6,  # d_1 = 2/11.
    )
    assert float(optimizer.grad_norm) == pytest.approx(10.0)
