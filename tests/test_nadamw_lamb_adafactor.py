"""NAdamW, LAMB and Adafactor against Keras 3's own, and NAdamW against AlgoPerf's code.

Keras's golden values (keras/src/optimizers/{nadam,lamb,adafactor}_test.py), then step for step
beside `keras.optimizers.Nadam`, `Lamb` and `Adafactor`; where ours differs from Keras on purpose
(NAdamW's momentum schedule, LAMB's weight decay), by how much.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from tests.test_distributed import CONFIG as DISTRIBUTED
from tests.test_optimizer_references import (
    EVERYTHING,
    MLP_NAMES,
    MLP_SHAPES,
    SHAPES_2D,
    follow_keras,
    keras_golden_run,
)
from trainer.convergence.suite import ConvergenceSuite
from trainer.distribution import strategies
from trainer.optimizers.adafactor import Adafactor
from trainer.optimizers.lamb import Lamb
from trainer.optimizers.nadamw import NAdamW
from trainer.step.state import build_train_state

# fmt: off
NADAM_GOLDEN = [  # Nadam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5)
    [0.4281] * 10,
    [-0.1738, -0.1731, -0.1726, -0.1723, -0.1721, -0.172, -0.1719, -0.1718, -0.1718, -0.1717],
    [-0.7115, -0.7103, -0.7096, -0.7092, -0.709, -0.7088, -0.7086, -0.7085, -0.7085, -0.7084],
    [-1.2335, -1.2322, -1.2313, -1.2309, -1.2306, -1.2304, -1.2302, -1.2301, -1.23, -1.2299],
    [-1.7492, -1.7478, -1.7469, -1.7464, -1.7461, -1.7459, -1.7457, -1.7456, -1.7455, -1.7454],
]
ADAFACTOR_GOLDEN = [  # Adafactor(0.5, beta_2_decay=-0.65, epsilon_1=1e-15, epsilon_2=1e-4,
    [0.55] * 10,      #           clip_threshold=0.9, relative_step=False)
    [0.3031, 0.3026, 0.3025, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024],
    [0.1671, 0.1665, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663],
    [0.0923, 0.0916, 0.0915, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914],
    [0.0554, 0.0548, 0.0546, 0.0546, 0.0546, 0.0546, 0.0546, 0.0545, 0.0545, 0.0545],
]
# fmt: on
LAMB_GOLDEN = [[x] * 10 for x in (0.999, 0.9982, 0.9974, 0.9965, 0.9955)]  # Lamb()
KERAS_NADAM = dict(weight_decay=0.0, epsilon=1e-7, momentum_schedule=True)  # Nadam's defaults


def one_step(optimizer, start, grad) -> np.ndarray:
    x = tf.Variable(np.array(start, np.float32))
    optimizer.apply_gradients([tf.constant(grad, tf.float32)], [x])
    return x.numpy()


def test_nadamw_with_keras_schedule_reproduces_keras_golden_values():
    keras_nadam = dict(weight_decay=0.0, beta_1=0.5, beta_2=0.67, epsilon=1e-5)
    keras_golden_run(NAdamW(0.5, **keras_nadam, momentum_schedule=True), NADAM_GOLDEN)
    with pytest.raises(AssertionError):  # AlgoPerf's NAdamW is another rule.
        keras_golden_run(NAdamW(0.5, **keras_nadam), NADAM_GOLDEN)
    # nadam_test.py test_single_step, at Keras's defaults.
    got = one_step(NAdamW(0.5, **KERAS_NADAM), [1.0, 2.0, 3.0, 4.0], [1.0, 6.0, 7.0, 2.0])
    np.testing.assert_allclose(got, [0.4686, 1.4686, 2.4686, 3.4686], rtol=1e-4, atol=1e-4)


def test_lamb_reproduces_keras_golden_values():
    keras_golden_run(Lamb(), LAMB_GOLDEN)
    got = one_step(Lamb(0.5), [1.0, 2.0, 3.0, 4.0], [1.0, 6.0, 7.0, 2.0])
    np.testing.assert_allclose(got, [-0.3693, 0.6306, 1.6306, 2.6306], rtol=1e-4, atol=1e-4)


def test_adafactor_reproduces_keras_golden_values():
    settings = dict(beta_2_decay=-0.65, epsilon_1=1e-15, epsilon_2=1e-4, clip_threshold=0.9)
    keras_golden_run(Adafactor(0.5, **settings), ADAFACTOR_GOLDEN)
    got = one_step(Adafactor(0.5), [1.0, 2.0, 3.0, 4.0], [1.0, 6.0, 7.0, 2.0])
    np.testing.assert_allclose(got, [-0.3693, 0.6307, 1.6307, 2.6307], rtol=1e-4, atol=1e-4)
    got = one_step(Adafactor(0.5), [[1.0, 2.0], [3.0, 4.0]], [[1.0, 6.0], [7.0, 2.0]])
    np.testing.assert_allclose(got, [[0.7007, -0.0081], [1.2492, 3.4407]], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: NAdamW(1.0, weight_decay=0.004, decays=EVERYTHING),
        lambda: Lamb(1.0, weight_decay=0.004, decay_in_trust_ratio=False, decays=EVERYTHING),
        lambda: Adafactor(1.0, weight_decay=0.004, decays=EVERYTHING),
    ],
    ids=["nadamw", "lamb-as-keras", "adafactor"],
)
def test_weight_decay_as_keras_decays_a_zero_gradient_step(make):
    # keras/src/optimizers/*_test.py test_weight_decay: three optimizers of decay 0.004 each
    # take a step with a zero gradient on the same variable.
    var = tf.Variable(2.0)
    for _ in range(3):
        make().apply_gradients([tf.zeros(())], [var])
    assert var.numpy() == pytest.approx(1.9760959, abs=1e-6)


def test_lambs_decay_inside_the_trust_ratio_is_the_papers_not_keras():
    # Keras decays before the step, outside the ratio: x (1 - lr * weight_decay), 0.4% here.
    # The paper puts weight_decay * x in r, and the ratio ||x|| / ||r|| then scales the step
    # to lr * ||x||, whatever the decay: from a zero gradient, x (1 - lr), here to half.
    start, settings = [[2.0, -1.0]], dict(weight_decay=0.004)
    keras_way = one_step(Lamb(0.5, decay_in_trust_ratio=False, **settings), start, [[0.0, 0.0]])
    paper_way = one_step(Lamb(0.5, **settings), start, [[0.0, 0.0]])
    np.testing.assert_allclose(keras_way, np.multiply(start, 1 - 0.5 * 0.004), rtol=1e-6)
    np.testing.assert_allclose(paper_way, np.multiply(start, 1 - 0.5), rtol=1e-6)
    # Without decay the two are one rule; biases never decay by default in either.
    for decay_in_trust_ratio in (True, False):
        lamb = Lamb(0.5, decay_in_trust_ratio=decay_in_trust_ratio, **settings)
        np.testing.assert_array_equal(one_step(lamb, [2.0, -1.0], [0.0, 0.0]), [2.0, -1.0])


def algoperf_nadamw(start, grads, lr, beta_1, beta_2, eps, weight_decay):
    """AlgoPerf's PyTorch NAdamW step (algorithms/baselines/external_tuning/
    pytorch_nadamw_full_budget.py, `nadamw`), transcribed to numpy op by op, in float64."""
    param, exp_avg, exp_avg_sq = np.array(start), np.zeros_like(start), np.zeros_like(start)
    for step, grad in enumerate(grads, start=1):
        param *= 1 - lr * weight_decay
        exp_avg = exp_avg * beta_1 + grad * (1 - beta_1)
        exp_avg_sq = exp_avg_sq * beta_2 + grad * grad * (1 - beta_2)
        exp_avg = exp_avg * beta_1 + grad * (1 - beta_1)  # The look-ahead, undone below.
        step_size = lr / (1 - beta_1**step)
        denom = np.sqrt(exp_avg_sq) / np.sqrt(1 - beta_2**step) + eps
        param = param - step_size * exp_avg / denom
        exp_avg = (exp_avg - grad * (1 - beta_1)) / beta_1
    return param


def test_nadamw_is_algoperfs_nadamw_with_weight_decay():
    # AlgoPerf's self-tuning baseline's betas and decay; float64, so rounding hides nothing
    # (the learning rate is 2^-7: a Python float learning rate becomes a float32 tensor).
    settings = dict(beta_1=1 - 0.0673, beta_2=0.9955, weight_decay=0.0812)
    lr = 2.0**-7
    rng = np.random.default_rng(0)
    start = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(6)]
    x = tf.Variable(start)
    nadamw = NAdamW(lr, epsilon=1e-8, decays=EVERYTHING, **settings)
    for grad in grads:
        nadamw.apply_gradients([tf.constant(grad)], [x])
    want = algoperf_nadamw(start, grads, lr, eps=1e-8, **settings)
    np.testing.assert_allclose(x.numpy(), want, rtol=1e-12, atol=1e-14)
    assert np.abs(want - start).max() > 0.05


def test_algoperfs_and_keras_nadam_differ_in_their_first_steps_only():
    # Both keep the same m and v. At step 1, AlgoPerf's look-ahead is (1 + beta_1) g, after
    # its bias correction; Keras's momentum schedule makes it
    # mu_2 (1 - beta_1) g / (1 - mu_1 mu_2) + g, with mu_t = beta_1 (1 - 0.5 * 0.96^t).
    beta_1 = 0.9
    mu_1, mu_2 = (beta_1 * (1 - 0.5 * 0.96**t) for t in (1, 2))
    keras_first = mu_2 * (1 - beta_1) / (1 - mu_1 * mu_2) + 1
    lr, x, g = 1e-3, [1.0, 1.0], [0.5, -2.0]
    steps = {
        schedule: np.subtract(x, one_step(NAdamW(lr, momentum_schedule=schedule), x, g))
        for schedule in (False, True)
    }
    np.testing.assert_allclose(steps[False], np.sign(g) * lr * (1 + beta_1), rtol=1e-4)
    np.testing.assert_allclose(steps[True], np.sign(g) * lr * keras_first, rtol=1e-4)
    assert keras_first == pytest.approx(1.063, abs=1e-3)
    # As 0.96^t vanishes, so does the difference: at step 300 (0.96^300 = 5e-6) it is below
    # 1e-5 * lr, where at step 1 it was 0.84 * lr.
    grads = tf.constant(np.random.default_rng(0).normal(size=(300, 3)))
    last_steps = []
    for schedule in (False, True):
        var, nadamw = tf.Variable(np.zeros(3)), NAdamW(lr, momentum_schedule=schedule)
        nadamw.build([var])

        @tf.function
        def take_steps(grads):
            for i in tf.range(tf.shape(grads)[0]):
                nadamw.apply_gradients([grads[i]], [var])

        take_steps(grads[:-1])
        before = var.numpy()
        take_steps(grads[-1:])
        last_steps.append(var.numpy() - before)
    np.testing.assert_allclose(*last_steps, rtol=0, atol=1e-5 * lr)
    assert np.abs(last_steps[0]).max() > 0.1 * lr


@pytest.mark.parametrize(
    "ours_cls, keras_cls, as_keras",
    [
        (NAdamW, keras.optimizers.Nadam, dict(epsilon=1e-7, momentum_schedule=True)),
        (Lamb, keras.optimizers.Lamb, dict(decay_in_trust_ratio=False)),
    ],
    ids=["nadamw", "lamb"],
)
def test_follows_keras_for_20_steps_with_weight_decay(ours_cls, keras_cls, as_keras):
    settings = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, weight_decay=0.05)
    ours, theirs = follow_keras(
        ours_cls(**settings, **as_keras, decays=EVERYTHING), keras_cls(**settings), SHAPES_2D, 20
    )
    for a, b in zip(ours, theirs):  # Float32 rounding only: 20 steps move x by ~0.2.
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


def test_adafactor_follows_keras_adafactor_on_the_mlps_shapes_for_10_steps():
    rng = np.random.default_rng(0)
    start = [0.05 * rng.normal(size=shape).astype(np.float32) for shape in MLP_SHAPES]
    ours = [tf.Variable(value, name=name) for value, name in zip(start, MLP_NAMES)]
    theirs = [
        keras.Variable(value, name=name.replace("/", "_")) for value, name in zip(start, MLP_NAMES)
    ]
    adafactor, keras_adafactor = Adafactor(0.01), keras.optimizers.Adafactor(0.01)
    for _ in range(10):
        grads = [tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in MLP_SHAPES]
        adafactor.apply_gradients(grads, ours)
        keras_adafactor.apply_gradients(zip(grads, theirs))
    # Each matrix keeps a row and a column accumulator, each vector a full one.
    assert [[tuple(s.shape) for s in slots] for slots in adafactor.slots] == [
        [(784,), (700,)], [(700,)], [(700,), (500,)], [(500,)], [(500,), (10,)], [(10,)]
    ]  # fmt: skip
    for a, b, first, name in zip(ours, theirs, start, MLP_NAMES):
        assert np.abs(a.numpy() - first).max() > 1e-4, name
        np.testing.assert_allclose(
            a.numpy(), np.asarray(b.numpy()), rtol=0, atol=1e-6, err_msg=name
        )


@pytest.fixture(scope="module")
def train_split():
    return mnist.load("bundled").train


@pytest.mark.slow  # Builds and trains two train states of the trainer for each.
@pytest.mark.parametrize("name", ["nadamw", "lamb", "adafactor"])
def test_accumulated_clipped_steps_resume_bit_for_bit_on_2_replicas(name, train_split, tmp_path):
    # Each replica its own half of every batch; every step clipped. 4 micro-batches take the
    # steps of the whole batch; and the checkpoint of step 2, restored, takes steps 3 and 4
    # bitwise as they were first taken (state left out of it would keep step 4's values).
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    config = dataclasses.replace(
        DISTRIBUTED, hidden_sizes=(16,), optimizer=name, clip_global_norm=0.1, weight_decay=0.01
    )
    dataset = mnist.train_dataset(train_split, config.batch_size, seed=0)

    def new_state(grad_accum_steps):
        accumulating = dataclasses.replace(config, grad_accum_steps=grad_accum_steps)
        state = build_train_state(strategy, accumulating, steps_per_epoch=10)
        return state, iter(strategy.experimental_distribute_dataset(dataset))

    def values(state):
        slots = [slot for slots in state.optimizer.slots for slot in slots]
        return [v.numpy() for v in [*state.model.trainable_variables, *slots]]

    whole, batches = new_state(1)
    whole.train(batches, 4)
    accumulated, batches = new_state(4)
    accumulated.train(batches, 2)
    path = accumulated.checkpoint().save(str(tmp_path / "ckpt"))
    accumulated.train(batches, 2)
    assert int(accumulated.optimizer.transforms[-1].clipped_steps.numpy()) == 4
    for a, b in zip(values(whole), values(accumulated)):
        # Summed in another order, a gradient near 0 may round to another normalized step.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    want = values(accumulated)
    accumulated.checkpoint().restore(path).assert_consumed()
    assert accumulated.step == 2
    accumulated.train(iter(strategy.experimental_distribute_dataset(dataset.skip(2))), 2)
    assert accumulated.step == 4
    for a, b in zip(want, values(accumulated)):
        np.testing.assert_array_equal(a, b)


def test_the_convergence_suite_keeps_lamb_and_adafactor_runs_apart():
    # The suite packs runs of an elementwise rule into one vector; a norm over the variable
    # (LAMB's trust ratio, Adafactor's rms) would mix them, so each of their runs is alone.
    names, rates = ["nadamw", "lamb", "adafactor"], [0.01, 0.1]
    together = ConvergenceSuite(names, rates)(max_iters=300)
    for rate in rates:
        alone = ConvergenceSuite(names, [rate])(max_iters=300)
        for name in names:
            np.testing.assert_array_equal(together[name, rate].path, alone[name, rate].path)
    assert together["lamb", 0.1].path[-1] != together["lamb", 0.01].path[-1]
