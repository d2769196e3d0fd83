"""Schedule-Free AdamW: Keras's golden values, Keras step for step, the authors' reference in
numpy (warm-up, r, weight_lr_power, weight decay at y), and the trainer's x: resumed bit for bit,
composed with clipping and accumulation."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.optimizers import OPTIMIZERS
from trainer.step.state import build_train_state

ScheduleFreeAdamW = OPTIMIZERS["schedule_free_adamw"]
MLP_SHAPES = [(784, 64), (64,), (64, 10), (10,)]  # --hidden_sizes=64's variables.


def run(optimizer, grads, start):
    """Applies `grads` (a list a step) to float32 variables starting at `start`."""
    variables = [tf.Variable(np.asarray(s, np.float32)) for s in start]
    for step in grads:
        optimizer.apply_gradients([tf.constant(g) for g in step], variables)
    return [v.numpy() for v in variables]


def run_keras(optimizer, grads, start):
    variables = [keras.Variable(np.array(s), dtype=np.array(s).dtype.name) for s in start]
    for step in grads:
        optimizer.apply_gradients(zip([tf.constant(g) for g in step], variables))
    return [v.numpy() for v in variables]


# Keras 3.15's schedule_free_adamw_test.py.
def test_single_step_reproduces_keras():
    # Step one moves each coordinate by lr against the sign of its gradient: x = z = y.
    [ours] = run(
        ScheduleFreeAdamW(0.5),
        [[np.array([1.0, 6.0, 7.0, 2.0], np.float32)]],
        [[1.0, 2.0, 3.0, 4.0]],
    )
    [by_keras] = run_keras(
        keras.optimizers.ScheduleFreeAdamW(learning_rate=0.5),
        [[np.array([1.0, 6.0, 7.0, 2.0], np.float32)]],
        [np.array([1.0, 2.0, 3.0, 4.0], np.float32)],
    )
    np.testing.assert_allclose(ours, [0.5, 1.5, 2.5, 3.5], rtol=1e-6)
    np.testing.assert_array_equal(ours, by_keras)


def test_a_variable_excluded_from_weight_decay_is_left_alone_by_a_zero_gradient():
    optimizer = ScheduleFreeAdamW(1.0, weight_decay=0.004, decays=lambda v: "exclude" not in v.name)
    var1, var2 = tf.Variable(2.0), tf.Variable(2.0, name="exclude")
    optimizer.apply_gradients([tf.zeros(()), tf.zeros(())], [var1, var2])
    assert float(var2) == pytest.approx(2.0, abs=1e-6)
    assert float(var1) == pytest.approx(2.0 * (1 - 0.004), rel=1e-6)  # See the test below.


def test_a_warmup_makes_the_first_step_smaller():
    grads, start = [[np.ones(3, np.float32)]], [[1.0, 2.0, 3.0]]
    [plain] = run(ScheduleFreeAdamW(0.5), grads, start)
    [warm] = run(ScheduleFreeAdamW(0.5, warmup_steps=10), grads, start)
    assert np.all(np.abs(warm - start[0]) < np.abs(plain - start[0]))
    np.testing.assert_allclose(start[0] - warm, 0.05, rtol=1e-5)  # lr * 1/10.


def test_ten_small_steps_decrease_the_weights():
    grads = [[np.full(3, 0.1, np.float32)]] * 10
    [trained] = run(ScheduleFreeAdamW(0.01), grads, [[1.0, 2.0, 3.0]])
    assert np.all(trained < [1.0, 2.0, 3.0])


def quadratic_steps(optimizer_run, steps, seed=0):
    """`steps` steps on the MLP's shapes of the gradient of 0.5 ||y - target_t||^2, a new random
    target each step, so each step's gradient depends on where the last one left y (float64)."""
    rng = np.random.default_rng(seed)
    start = [rng.normal(size=shape) for shape in MLP_SHAPES]
    targets = [[rng.normal(size=shape) for shape in MLP_SHAPES] for _ in range(steps)]
    return optimizer_run(start, targets)


def ours_on_quadratic(optimizer):
    def run_it(start, targets):
        variables = [tf.Variable(s) for s in start]
        for target in targets:
            grads = [v - t for v, t in zip(variables, target)]
            optimizer.apply_gradients(grads, variables)
        return [v.numpy() for v in variables]

    return run_it


def keras_on_quadratic(optimizer):
    def run_it(start, targets):
        variables = [keras.Variable(s, dtype="float64") for s in start]
        for target in targets:
            grads = [tf.convert_to_tensor(v) - t for v, t in zip(variables, target)]
            optimizer.apply_gradients(zip(grads, variables))
        return [v.numpy() for v in variables]

    return run_it


# Keras keeps its learning rate in float32: 2^-8 is exact there.
LR = 2.0**-8


def keras_as_written(start, targets, lr, warmup, z_read_after_its_update):
    """Keras 3.15's ScheduleFreeAdamW.update_step, in numpy. Its `momentum_old = momentum.value`
    is the variable itself, so x_old is recovered from y and the z *after* this step's update
    (z_read_after_its_update=True is what Keras computes); False is what its comments say."""
    beta_1, beta_2, eps = 0.9, 0.999, 1e-8
    y = [np.array(s) for s in start]
    z, v = [s.copy() for s in y], [np.zeros_like(s) for s in y]
    for t, target in enumerate(targets, start=1):
        lr_t = lr * min(t / warmup, 1.0) if warmup else lr
        for i in range(len(y)):
            grad, z_old = y[i] - target[i], z[i]
            v[i] = v[i] + (grad * grad - v[i]) * (1 - beta_2)
            z[i] = z[i] - lr_t * grad / (np.sqrt(v[i] / (1 - beta_2**t)) + eps)
            x_old = (y[i] - (1 - beta_1) * (z[i] if z_read_after_its_update else z_old)) / beta_1
            x_new = (1 - 1 / t) * x_old + 1 / t * z[i]
            y[i] = (1 - beta_1) * z[i] + beta_1 * x_new
    return y


@pytest.mark.parametrize("warmup_steps", [0, 5])
def test_keras_follows_its_code_and_ours_its_comments_for_20_steps(warmup_steps):
    # Keras averages with c_t = 1/t: ours with r = 0 and no weighting by lr, or with the
    # default lr^2 weighting and no warm-up (a constant lr cancels).
    power = 2.0 if warmup_steps == 0 else 0.0
    ours = ScheduleFreeAdamW(LR, warmup_steps=warmup_steps, weight_lr_power=power)
    by_keras = keras.optimizers.ScheduleFreeAdamW(learning_rate=LR, warmup_steps=warmup_steps)
    trained = quadratic_steps(ours_on_quadratic(ours), 20)
    expected = quadratic_steps(keras_on_quadratic(by_keras), 20)
    for after in (True, False):
        written = quadratic_steps(
            lambda start, targets: keras_as_written(start, targets, LR, warmup_steps, after), 20
        )
        for a, b in zip(expected if after else trained, written):  # Float64 throughout.
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    # Keras's x takes a step too many of z's: not a rounding difference.
    assert not np.allclose(trained[0], expected[0], rtol=1e-3)


def test_with_a_warmup_the_lr_squared_average_weighs_the_warmup_less():
    plain = ScheduleFreeAdamW(LR, warmup_steps=5, weight_lr_power=0.0)  # c_t = 1/t.
    weighted = ScheduleFreeAdamW(LR, warmup_steps=5)  # weight_lr_power=2, as the reference.
    quadratic_steps(ours_on_quadratic(plain), 3)
    quadratic_steps(ours_on_quadratic(weighted), 3)
    assert float(plain.average_weight) == pytest.approx(1 / 3)
    assert float(weighted.average_weight) == pytest.approx(3**2 / (1 + 2**2 + 3**2))


def test_keras_weight_decay_is_undone_by_its_first_average_and_ours_is_not():
    # Keras shrinks y before the step and recovers x from y; at t = 1 the average is z alone,
    # which weight decay never touched: its first step decays nothing. The reference decays z.
    [by_keras] = run_keras(
        keras.optimizers.ScheduleFreeAdamW(learning_rate=1.0, weight_decay=0.004),
        [[np.float32(0.0)]],
        [np.float32(2.0)],
    )
    [ours] = run(
        ScheduleFreeAdamW(1.0, weight_decay=0.004, decays=lambda v: True),
        [[np.float32(0.0)]],
        [2.0],
    )
    assert float(by_keras) == 2.0
    assert float(ours) == pytest.approx(2.0 * (1 - 0.004), rel=1e-7)


def reference(start, targets, lr, beta_1, beta_2, eps, weight_decay, warmup, r, power, decaying):
    """facebookresearch/schedule_free's adamw_schedulefree_reference.py `step`, in numpy."""
    y = [np.array(s) for s in start]
    z, x = [s.copy() for s in y], [s.copy() for s in y]
    v = [np.zeros_like(s) for s in y]
    weight_sum, lr_max = 0.0, -1.0
    for k, target in enumerate(targets):
        sched = (k + 1) / warmup if k < warmup else 1.0
        correction_2 = 1 - beta_2 ** (k + 1)
        lr_k = lr * sched
        lr_max = max(lr_k, lr_max)
        weight = (k + 1) ** r * lr_max**power
        weight_sum += weight
        ckp1 = weight / weight_sum
        for i, decays in enumerate(decaying):
            grad = y[i] - target[i]
            if weight_decay and decays:
                z[i] = z[i] - lr_k * weight_decay * y[i]
            v[i] = beta_2 * v[i] + (1 - beta_2) * grad * grad
            z[i] = z[i] - lr_k * grad / (np.sqrt(v[i] / correction_2) + eps)
            x[i] = (1 - ckp1) * x[i] + ckp1 * z[i]
            y[i] = beta_1 * x[i] + (1 - beta_1) * z[i]
    return y, z, x


@pytest.mark.parametrize("r, power", [(0.0, 2.0), (0.75, 2.0), (0.0, 0.0)])
def test_follows_the_authors_reference_with_warmup_and_weight_decay(r, power):
    settings = dict(lr=0.01, beta_1=0.9, beta_2=0.99, eps=1e-8, weight_decay=0.05, warmup=8)
    optimizer = ScheduleFreeAdamW(
        settings["lr"],
        weight_decay=settings["weight_decay"],
        beta_1=settings["beta_1"],
        beta_2=settings["beta_2"],
        epsilon=settings["eps"],
        warmup_steps=settings["warmup"],
        r=r,
        weight_lr_power=power,
    )  # Weight matrices decay, biases do not: is_weight_matrix, as the trainer's.
    trained = quadratic_steps(ours_on_quadratic(optimizer), 30)
    decaying = [len(shape) == 2 for shape in MLP_SHAPES]
    y, z, x = quadratic_steps(
        lambda start, targets: reference(
            start, targets, r=r, power=power, decaying=decaying, **settings
        ),
        30,
    )
    for ours, expected in zip(trained, y):
        np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-12)
    for (slot_z, _, slot_x), want_z, want_x in zip(optimizer.slots, z, x):
        np.testing.assert_allclose(slot_z.numpy(), want_z, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(slot_x.numpy(), want_x, rtol=1e-10, atol=1e-12)
    assert float(optimizer.current_learning_rate()) == settings["lr"]  # Warm-up over.


def test_a_float16_overflow_leaves_y_z_x_and_the_average_alone():
    optimizer = ScheduleFreeAdamW(0.1, warmup_steps=3, loss_scaling=True)
    y = tf.Variable([1.0, 2.0])
    optimizer.build([y])
    optimizer.apply_gradients([optimizer.scale_loss(tf.constant([0.5, -1.0]))], [y])

    def state():
        counters = (optimizer.iterations, optimizer.weight_sum, optimizer.average_weight)
        return [v.numpy().copy() for v in (y, *optimizer.slots[0], *counters)]

    before = state()
    optimizer.apply_gradients([tf.constant([np.inf, 1.0])], [y])
    assert int(optimizer.skipped_steps) == 1
    for a, b in zip(before, state()):
        np.testing.assert_array_equal(a, b)
    # The next applied step is the second: lr_t = 2/3 lr, c_2 = 4 / (1 + 4).
    optimizer.apply_gradients([optimizer.scale_loss(tf.constant([0.5, -1.0]))], [y])
    assert float(optimizer.average_weight) == pytest.approx(4 / 5)


def test_a_schedule_is_refused():
    with pytest.raises(ValueError, match="learning_rate must be a number, not a schedule"):
        ScheduleFreeAdamW(lambda step: 0.1)


# The trainer's own train state, on two logical CPU replicas.
BATCH = 64
CONFIG = TrainConfig(
    optimizer="schedule_free_adamw",
    hidden_sizes=(32,),
    seed=3,
    learning_rate=1e-2,
    lr_schedule="constant",
    warmup_epochs=0.5,
    epochs=1,
    batch_size=BATCH,
    weight_decay=0.01,
    clip_global_norm=0.05,
)
STEPS_PER_EPOCH = 8  # The warm-up: 4 steps.


@pytest.fixture(scope="module")
def train_split():
    return mnist.load("bundled").train


def new_state(config=CONFIG, replicas=2):
    strategy = strategies.create_strategy("mirrored", cpu_replicas=replicas)
    return strategy, build_train_state(strategy, config, STEPS_PER_EPOCH)


def batches(strategy, split, skip=0):
    dataset = mnist.train_dataset(split, BATCH, seed=0).skip(skip)
    return iter(strategy.experimental_distribute_dataset(dataset))


def everything(state):
    """y, x and the optimizer's whole state, as arrays."""
    optimizer = state.optimizer
    return [
        v.numpy()
        for v in [
            *state.model.trainable_variables,
            *state.ema_model.trainable_variables,
            *[slot for slots in optimizer.slots for slot in slots],
            optimizer.iterations,
            optimizer.weight_sum,
            optimizer.average_weight,
        ]
    ]


@pytest.fixture(scope="module")
def runs(train_split, tmp_path_factory):
    """7 steps, the warm-up's 4 among them: straight through (saved after 3); from that
    checkpoint again, restored into the same train state; and with each batch in 4
    micro-batches."""
    strategy, state = new_state()
    start = everything(state)
    state.train(batches(strategy, train_split), 3)  # Mid warm-up.
    path = state.checkpoint().save(str(tmp_path_factory.mktemp("sf") / "ckpt"))
    state.train(batches(strategy, train_split, skip=3), 4)
    straight = everything(state)
    state.checkpoint().restore(path).assert_consumed()
    state.train(batches(strategy, train_split, skip=3), 4)
    resumed = everything(state)
    strategy, accumulated = new_state(dataclasses.replace(CONFIG, grad_accum_steps=4))
    accumulated.train(batches(strategy, train_split), 7)
    return start, state, straight, resumed, accumulated


@pytest.mark.slow  # Reads the `runs` fixture: two train states built and trained.
def test_the_trainer_keeps_x_in_a_second_model_that_it_validates_and_exports(runs):
    start, state, *_ = runs
    x = state.ema_model.trainable_variables
    assert state.final_model is state.ema_model
    assert all(a is slots[2] for a, slots in zip(x, state.optimizer.slots))
    assert not np.allclose(x[0].numpy(), state.model.trainable_variables[0].numpy())
    assert not np.allclose(x[0].numpy(), start[0])
    for variable in [*state.model.trainable_variables, *x]:  # Every replica's copy alike.
        first, second = (v.numpy() for v in variable.values)
        np.testing.assert_array_equal(first, second, err_msg=variable.name)
    # The warm-up is the optimizer's own: 4 steps of lr / 4 ... lr, then lr.
    assert float(state.optimizer.current_learning_rate()) == CONFIG.learning_rate
    assert int(state._clipping().clipped_steps.numpy()) == 7  # 0.05 clips every step here.


@pytest.mark.slow  # Reads the `runs` fixture: two train states built and trained.
def test_a_resumed_run_goes_on_bit_for_bit(runs):
    *_, straight, resumed, _ = runs
    assert len(straight) == len(resumed) == 4 * 5 + 3  # y, x, z, v, x again; 3 counters.
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # Reads the `runs` fixture: two train states built and trained.
def test_clipping_and_accumulation_compose(runs):
    _, state, straight, _, accumulated = runs
    assert state.step == accumulated.step == 7
    for a, b in zip(straight, everything(accumulated)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
