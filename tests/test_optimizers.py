"""Our optimizers: their update math, their state, and their guards."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.config import ConfigError, TrainConfig
from trainer.optimizers import (
    OPTIMIZERS,
    Adam,
    GradientDescent,
    Momentum,
    create,
    create_schedule,
)

GRADS = [np.array([0.5, -1.0], np.float32), np.array([-0.25, 2.0], np.float32)]


def run_steps(optimizer, grads=GRADS, start=(1.0, 2.0)):
    x = tf.Variable(np.array(start, np.float32))
    path = []
    for g in grads:
        optimizer.apply_gradients([tf.constant(g)], [x])
        path.append(x.numpy().copy())
    return path


@pytest.mark.parametrize(
    "optimizer, expected",
    [
        # x - 0.1 g: [1 - .05, 2 + .1] then [.95 + .025, 2.1 - .2].
        (GradientDescent(0.1), [[0.95, 2.1], [0.975, 1.9]]),
        # change1 = 0.1 g1 = [.05, -.1]; change2 = 0.1 g2 + 0.7 change1 = [.01, .13].
        (Momentum(0.1, momentum=0.7), [[0.95, 2.1], [0.94, 1.97]]),
    ],
)
def test_first_steps_match_hand_computed_values(optimizer, expected):
    np.testing.assert_allclose(run_steps(optimizer), expected, rtol=1e-6)


def test_adam_matches_its_equations():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-7
    x, m, v = np.array([1.0, 2.0]), np.zeros(2), np.zeros(2)
    expected = []
    for t, g in enumerate(GRADS, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        x = x - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        expected.append(x)
    # Step one moves each coordinate by lr against the sign of its gradient.
    np.testing.assert_allclose(expected[0], [0.9, 2.1], rtol=1e-6)
    np.testing.assert_allclose(run_steps(Adam(lr)), expected, rtol=1e-6)


def train_on_a_random_regression(apply) -> tuple[np.ndarray, np.ndarray]:
    """25 steps of `apply(grad, w)` on a float64 least-squares problem; (start, final w)."""
    rng = np.random.default_rng(0)
    features, targets = rng.normal(size=(64, 5)), rng.normal(size=(64, 1))
    start = rng.normal(size=(5, 1))
    w = tf.Variable(start)
    for _ in range(25):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((features @ w - targets) ** 2)
        apply(tape.gradient(loss, w), w)
    return start, w.numpy()


def test_adam_agrees_with_keras_adam_on_a_random_problem():
    # Ours adds epsilon to sqrt(v_hat); Keras adds it to sqrt(v), i.e. ours equals Keras with
    # epsilon * sqrt(1 - beta_2^t). With a tiny epsilon, in float64 (so that rounding does not
    # hide a real difference), the two must agree to many digits. Keras keeps its
    # hyperparameters in float32, so they are chosen to be exact in float32.
    settings = dict(learning_rate=0.0625, beta_1=0.875, beta_2=1 - 2**-10, epsilon=1e-12)
    ours = Adam(**settings)
    keras = tf.keras.optimizers.Adam(**settings)
    start, trained = train_on_a_random_regression(lambda g, w: ours.apply_gradients([g], [w]))
    _, by_keras = train_on_a_random_regression(lambda g, w: keras.apply_gradients([(g, w)]))
    np.testing.assert_allclose(trained, by_keras, rtol=1e-9, atol=1e-12)
    assert not np.allclose(start, trained)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_round_trips_through_a_checkpoint(name, tmp_path):
    x = tf.Variable([1.0, 2.0])
    optimizer = create(name, 0.1)
    for g in GRADS:
        optimizer.apply_gradients([tf.constant(g)], [x])
    path = tf.train.Checkpoint(x=x, optimizer=optimizer).save(str(tmp_path / "ckpt"))

    x2 = tf.Variable([0.0, 0.0])
    restored = create(name, 0.1)
    restored.build([x2])
    tf.train.Checkpoint(x=x2, optimizer=restored).restore(path).assert_consumed()
    assert int(restored.iterations) == len(GRADS)
    for slots, slots2 in zip(optimizer.slots, restored.slots):
        for slot, slot2 in zip(slots, slots2):
            np.testing.assert_array_equal(slot.numpy(), slot2.numpy())
    # And the next step is the same from either.
    optimizer.apply_gradients([tf.constant(GRADS[0])], [x])
    restored.apply_gradients([tf.constant(GRADS[0])], [x2])
    np.testing.assert_array_equal(x.numpy(), x2.numpy())


def test_state_is_one_variable_per_slot_per_variable():
    a, b = tf.Variable([1.0, 2.0]), tf.Variable([[3.0]])
    optimizer = Momentum(0.1)
    optimizer.apply_gradients([tf.ones([2]), tf.ones([1, 1])], [a, b])
    assert [[s.shape for s in slots] for slots in optimizer.slots] == [[(2,)], [(1, 1)]]
    # The notebook shared one velocity across variables; ours keeps them apart.
    np.testing.assert_allclose(optimizer.slots[0][0].numpy(), [0.1, 0.1])
    assert optimizer.iterations.dtype == tf.int64


def test_compiled_update_traces_once():
    x = tf.Variable([1.0, 2.0])
    optimizer = Adam(0.1)
    optimizer.build([x])

    @tf.function
    def step(g):
        optimizer.apply_gradients([g], [x])

    for g in GRADS * 3:
        step(tf.constant(g))
    assert step.experimental_get_tracing_count() == 1
    assert int(optimizer.iterations) == 6


def test_a_schedule_sees_the_step_count():
    x = tf.Variable([0.0])
    optimizer = GradientDescent(lambda step: 1.0 / tf.cast(step + 1, tf.float32))
    for _ in range(3):
        optimizer.apply_gradients([tf.constant([1.0])], [x])
    np.testing.assert_allclose(x.numpy(), [-(1 + 1 / 2 + 1 / 3)], rtol=1e-6)


@pytest.mark.parametrize(
    "name, want",
    [
        ("constant", [0.0, 0.05, 0.1, 0.1, 0.1]),
        ("cosine", [0.0, 0.05, 0.1, 0.05, 0.0]),
    ],
)
def test_both_schedules_warm_up_then_hold_or_decay(name, want):
    schedule = create_schedule(name, 0.1, total_steps=110, warmup_steps=10)
    got = [float(schedule(tf.constant(step))) for step in (0, 5, 10, 60, 110)]
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert create_schedule("constant", 0.1, total_steps=110) == 0.1  # No warm-up: a number.


def test_none_gradients_leave_their_variable_alone():
    a, b = tf.Variable([1.0]), tf.Variable([1.0])
    GradientDescent(0.5).apply_gradients([None, tf.constant([1.0])], [a, b])
    assert a.numpy()[0] == 1.0 and b.numpy()[0] == 0.5


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: GradientDescent(0.1).apply_gradients([], []), "no gradients"),
        (lambda: GradientDescent(0.1).apply_gradients([None], [tf.Variable(1.0)]), "no gradients"),
        (lambda: GradientDescent(0.1).apply_gradients([tf.constant(1.0)], []), "1 gradients for 0"),
        (lambda: GradientDescent(0.1).build([]), "no variables"),
        (lambda: GradientDescent(-1.0), "learning_rate must be positive"),
        (lambda: Momentum(0.1, momentum=1.5), "momentum must be in"),
        (lambda: Adam(0.1, beta_2=1.0), "beta_2 must be in"),
        (lambda: create("sgd", 0.1), "unknown optimizer 'sgd'"),
    ],
)
def test_bad_use_is_a_clear_error(make, error):
    with pytest.raises(ValueError, match=error):
        make()


def test_the_first_non_finite_step_is_noted():
    x = tf.Variable([1.0, 2.0])
    optimizer = GradientDescent(0.1)
    for g in ([1.0, 1.0], [1.0, 1.0], [np.nan, 1.0], [1.0, np.inf], [1.0, 1.0]):
        optimizer.apply_gradients([tf.constant(g)], [x])
    assert int(optimizer.first_nonfinite_step) == 3
    assert int(optimizer.iterations) == 5


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_the_xla_compiled_rule_takes_the_op_by_op_rule_steps(name):
    # The trainer compiles each variable's update with XLA; the convergence suite runs the same
    # rule op by op for the notebook's exact rounding. Only rounding may tell them apart.
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(3, 4)).astype(np.float32) for _ in range(20)]
    start = rng.normal(size=(3, 4)).astype(np.float32)
    paths = [run_steps(create(name, 0.01, xla_update=xla), grads, start) for xla in (True, False)]
    np.testing.assert_allclose(*paths, rtol=1e-5, atol=1e-6)


# Optax's test functions: each optimizer, in a compiled loop, must reach a known minimum.


def quadratic(x):
    """0.5 * (1 (x0 - 3)^2 + 5 (x1 + 2)^2): minimum 0 at (3, -2)."""
    return 0.5 * tf.reduce_sum(tf.constant([1.0, 5.0]) * (x - tf.constant([3.0, -2.0])) ** 2)


def rosenbrock(x):
    """(1 - x0)^2 + 100 (x1 - x0^2)^2: minimum 0 at (1, 1), at the end of a long curved valley."""
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def matrix_quadratic(w):
    """0.5 * sum(c * (w - t)^2) over a 2x3 matrix: minimum 0 at t, for Muon's matrix rule."""
    target = tf.constant([[3.0, -2.0, 1.0], [0.5, 1.5, -1.0]])
    return 0.5 * tf.reduce_sum(tf.constant([[1.0, 5.0, 2.0], [3.0, 1.0, 4.0]]) * (w - target) ** 2)


def matrix_rosenbrock(w):
    """Rosenbrock's function of a 1x2 matrix."""
    return rosenbrock(w[0])


# Sign, orthogonalized and trust-ratio steps (Lion, Muon, LAMB) do not shrink with the gradient:
# they reach a minimum as their learning rate decays, so they run with the cosine schedule. Muon
# runs on matrices (on vectors it is AdamW), without weight decay, which would move the minimum.
NO_DECAY = {"weight_decay": 0.0}
TEST_FUNCTIONS = [  # (optimizer, loss, start, its minimum, learning rate, steps, tolerance)
    ("gd", quadratic, (0.0, 0.0), (3.0, -2.0), 0.1, 200, 1e-4),
    ("momentum", quadratic, (0.0, 0.0), (3.0, -2.0), 0.05, 200, 1e-4),
    ("adam", quadratic, (0.0, 0.0), (3.0, -2.0), 0.05, 1000, 1e-4),
    ("adamw", quadratic, (0.0, 0.0), (3.0, -2.0), 0.05, 1000, 1e-4),
    ("lion", quadratic, (0.0, 0.0), (3.0, -2.0), ("cosine", 0.01), 2000, 1e-4),
    ("muon", matrix_quadratic, [[0.0] * 3] * 2, [[3.0, -2.0, 1.0], [0.5, 1.5, -1.0]],
     ("cosine", 0.05), 2000, 1e-4, NO_DECAY),
    ("nadamw", quadratic, (0.0, 0.0), (3.0, -2.0), 0.05, 1000, 1e-4),
    ("lamb", quadratic, (0.0, 0.0), (3.0, -2.0), ("cosine", 0.05), 2000, 1e-4),
    ("adafactor", quadratic, (0.0, 0.0), (3.0, -2.0), 0.05, 2000, 1e-4),
    # Rosenbrock's classic start; gradient descent needs a small rate in the valley's steep walls.
    ("gd", rosenbrock, (-1.2, 1.0), (1.0, 1.0), 2e-3, 10_000, 1e-3),
    ("momentum", rosenbrock, (-1.2, 1.0), (1.0, 1.0), 1e-3, 10_000, 1e-3),
    ("adam", rosenbrock, (-1.2, 1.0), (1.0, 1.0), 1e-2, 10_000, 1e-3),
    ("adamw", rosenbrock, (-1.2, 1.0), (1.0, 1.0), 1e-2, 10_000, 1e-3),
    ("lion", rosenbrock, (-1.2, 1.0), (1.0, 1.0), ("cosine", 3e-3), 10_000, 1e-3),
    ("muon", matrix_rosenbrock, [[-1.2, 1.0]], [[1.0, 1.0]], ("cosine", 1e-2), 10_000, 1e-3,
     NO_DECAY),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, loss, start, minimum, learning_rate, steps, tolerance, settings",
    [case if len(case) == 8 else (*case, {}) for case in TEST_FUNCTIONS],
    ids=[f"{case[0]}-{case[1].__name__}" for case in TEST_FUNCTIONS],
)
def test_reaches_the_minimum_of_a_test_function_in_a_compiled_loop_traced_once(
    name, loss, start, minimum, learning_rate, steps, tolerance, settings
):
    x = tf.Variable(np.array(start, np.float32))
    if isinstance(learning_rate, tuple):  # (schedule, peak)
        learning_rate = create_schedule(*learning_rate, total_steps=steps)
    optimizer = create(name, learning_rate, **settings)
    optimizer.build([x])

    @tf.function
    def minimize(num_steps):
        for _ in tf.range(num_steps):
            with tf.GradientTape() as tape:
                value = loss(x)
            optimizer.apply_gradients(tape.gradient(value, [x]), [x])

    minimize(tf.constant(steps // 2))
    minimize(tf.constant(steps - steps // 2))  # Another count, the same trace.
    assert minimize.experimental_get_tracing_count() == 1
    assert int(optimizer.iterations) == steps
    np.testing.assert_allclose(x.numpy(), minimum, rtol=0, atol=tolerance)
    assert float(loss(x)) < tolerance


def test_the_muon_scale_names_the_run_and_holds_its_resumption():
    spectral = TrainConfig(optimizer="muon", muon_scale="spectral")
    assert "_muon_spectral_lr" in spectral.run_dir_name()
    assert create("muon", 1e-3, **spectral.optimizer_settings()).muon_scale == "spectral"
    with pytest.raises(ConfigError, match="^--muon_scale=unset: .* with --muon_scale=spectral"):
        TrainConfig(optimizer="muon").check_resumable(spectral.flagfile(), "runs/r/flags.txt")
    with pytest.raises(ConfigError, match="^--muon_scale=keller: must be one of moonlight, spec"):
        TrainConfig(optimizer="muon", muon_scale="keller").validate()


def test_the_two_epsilon_placements_differ_by_the_bound_docs_optimizers_states():
    # epsilon added to sqrt(v) (epsilon_hat) is epsilon / c_t added to sqrt(v_hat), with
    # c_t = sqrt(1 - beta_2^t): the step is the paper's times (s + eps) / (s + eps / c_t), with
    # s = sqrt(v_hat), so smaller by at most lr * eps * (1 / c_t - 1) * |m_hat| / v_hat.
    # Simulated in float64, the two optimizers fed the same gradients (so the same moments),
    # on coordinates whose gradients span 1e-9 to 1.
    lr, beta_1, beta_2, eps, steps = 1e-3, 0.9, 0.999, 1e-7, 50
    rng = np.random.default_rng(3)
    sizes = 10.0 ** rng.uniform(-9, 0, size=1000)
    paper, keras_style = (
        Adam(lr, beta_1, beta_2, eps, epsilon_hat=hat, name=f"adam_{hat}") for hat in (False, True)
    )
    x_paper, x_hat = (
        tf.Variable(tf.zeros(1000, tf.float64)),
        tf.Variable(tf.zeros(1000, tf.float64)),
    )
    worst, old_worst = [], []
    for t in range(1, steps + 1):
        grad = tf.constant(sizes * rng.normal(1.0, 1.0, size=1000))
        before_paper, before_hat = x_paper.numpy(), x_hat.numpy()
        paper.apply_gradients([grad], [x_paper])
        keras_style.apply_gradients([grad], [x_hat])
        step_paper, step_hat = before_paper - x_paper.numpy(), before_hat - x_hat.numpy()
        m, v = (slot.numpy() for slot in paper.slots[0])
        m_hat, s = m / (1 - beta_1**t), np.sqrt(v / (1 - beta_2**t))
        c = np.sqrt(1 - beta_2**t)
        difference = step_paper - step_hat
        bound = lr * eps * (1 / c - 1) * np.abs(m_hat) / s**2
        assert np.all(np.sign(step_hat) == np.sign(step_paper))
        assert np.all(np.abs(step_hat) <= np.abs(step_paper))
        assert np.all(np.abs(difference) <= bound * (1 + 1e-6))
        worst.append(np.max(np.abs(difference) / bound))
        old_worst.append(np.max(np.abs(difference) / (lr * eps / s)))
    assert min(worst) > 0.999  # Tight at every step: where s is far above eps / c_t.
    # The statement it replaces, lr * eps / s, is short by 1 / c_1 - 1 = 30.6 at step 1 and by
    # 3.5 |m_hat| / s at step 50 (3.9 here).
    assert old_worst[0] == pytest.approx(1 / np.sqrt(1 - beta_2) - 1, rel=1e-3)
    assert old_worst[-1] > 3
