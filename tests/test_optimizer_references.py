"""AdamW, Lion and Muon against an implementation we did not write: Keras 3's own.

Keras's golden values (keras/src/optimizers/{adamw,lion,muon}_test.py, same inputs, same outputs),
then step for step beside `keras.optimizers.AdamW`, `Lion` and `Muon` on random problems.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.optimizers import AdamW, Lion, Muon, is_weight_matrix
from trainer.optimizers.muon import orthogonalize, update_scale

EVERYTHING = lambda var: True  # noqa: E731  Keras decays every variable it is not told to skip.


def keras_golden_run(optimizer, golden):
    """Keras's golden-value test: a first step with gradients 0.01, then 0.1, 0.2, ..., 1.0;
    `golden[i]` is x before the (i + 2)-th step."""
    x = tf.Variable(np.ones([10], np.float32))
    optimizer.apply_gradients([tf.fill([10], 0.01)], [x])
    for want in golden:
        np.testing.assert_allclose(x.numpy(), want, rtol=5e-4, atol=5e-4)  # Keras's tolerance.
        optimizer.apply_gradients([tf.range(0.1, 1.1, 0.1)], [x])


# fmt: off
ADAMW_GOLDEN = [  # AdamW(learning_rate=1.0, weight_decay=0.5, epsilon=2)
    [0.4998] * 10,
    [0.2486, 0.2475, 0.2463, 0.2451, 0.244, 0.2428, 0.2417, 0.2405, 0.2394, 0.2382],
    [0.1223, 0.1198, 0.1174, 0.1149, 0.1124, 0.11, 0.1075, 0.1051, 0.1027, 0.1003],
    [0.0586, 0.0549, 0.0512, 0.0475, 0.0439, 0.0402, 0.0366, 0.033, 0.0294, 0.0258],
    [0.0263, 0.0215, 0.0167, 0.012, 0.0073, 0.0026, -0.0021, -0.0067, -0.0113, -0.0159],
]
# fmt: on


def test_adamw_reproduces_keras_golden_values():
    # epsilon=2 is not negligible beside sqrt(v): there Keras's placement (the paper's ε̂)
    # and Algorithm 1's differ, so the golden values are for epsilon_hat=True.
    keras_golden_run(
        AdamW(1.0, weight_decay=0.5, epsilon=2.0, epsilon_hat=True, decays=EVERYTHING),
        ADAMW_GOLDEN,
    )
    with pytest.raises(AssertionError):  # ... and the placement matters here.
        keras_golden_run(AdamW(1.0, weight_decay=0.5, epsilon=2.0, decays=EVERYTHING), ADAMW_GOLDEN)


def test_lion_reproduces_keras_golden_values():
    # Lion() at Keras's default learning rate, 1e-3 (ours defaults to a tenth of it).
    keras_golden_run(Lion(1e-3), [[0.999 - 0.001 * i] * 10 for i in range(5)])


@pytest.mark.parametrize("ours_cls", [AdamW, Lion])
def test_weight_decay_as_keras_decays_a_zero_gradient_step(ours_cls):
    # keras/src/optimizers/*_test.py test_weight_decay: three optimizers of decay 0.004 each
    # take a step with a zero gradient on the same variable.
    var = tf.Variable(2.0)
    for _ in range(3):
        ours_cls(1.0, weight_decay=0.004, decays=EVERYTHING).apply_gradients([tf.zeros(())], [var])
    assert var.numpy() == pytest.approx(1.9760959, abs=1e-6)
    bias = tf.Variable([2.0])  # By default only weight matrices decay.
    ours_cls(1.0, weight_decay=0.004).apply_gradients([tf.zeros([1])], [bias])
    assert bias.numpy()[0] == 2.0


def follow_keras(ours, theirs, shapes, steps, seed=0):
    """Applies the same random gradients to copies of the same random variables with both;
    returns (ours, Keras's) values after the last step."""
    rng = np.random.default_rng(seed)
    start = [rng.normal(size=shape).astype(np.float32) for shape in shapes]
    names = [f"v{i}" for i in range(len(shapes))]
    our_vars = [tf.Variable(value, name=name) for value, name in zip(start, names)]
    their_vars = [keras.Variable(value, name=name) for value, name in zip(start, names)]
    theirs.build(their_vars)
    for _ in range(steps):
        grads = [tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in shapes]
        ours.apply_gradients(grads, our_vars)
        theirs.apply_gradients(zip(grads, their_vars))
    return [v.numpy() for v in our_vars], [np.asarray(v.numpy()) for v in their_vars]


SHAPES_2D = [(16, 8), (8, 4)]


def test_adamw_follows_keras_adamw_for_20_steps():
    settings = dict(learning_rate=0.01, weight_decay=0.05, beta_1=0.9, beta_2=0.999)
    ours, theirs = follow_keras(
        AdamW(**settings, epsilon_hat=True, decays=EVERYTHING),
        keras.optimizers.AdamW(**settings),
        SHAPES_2D,
        steps=20,
    )
    for a, b in zip(ours, theirs):  # Float32 rounding only: 20 steps move x by ~0.2.
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)
    # With epsilon where the paper puts it, each step differs by at most lr * epsilon *
    # (1 / sqrt(1 - beta_2^t) - 1) * |m_hat| / v_hat per coordinate (docs/optimizers.md):
    # about 2e-6 in 20 steps at |g| ~ 0.1, under the 2e-5 allowed here.
    paper, _ = follow_keras(
        AdamW(**settings, decays=EVERYTHING), keras.optimizers.AdamW(**settings), SHAPES_2D, 20
    )
    for a, b in zip(paper, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


def test_lion_follows_keras_lion_for_20_steps():
    settings = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.99, weight_decay=0.1)
    ours, theirs = follow_keras(
        Lion(**settings, decays=EVERYTHING), keras.optimizers.Lion(**settings), SHAPES_2D, 20
    )
    for a, b in zip(ours, theirs):  # Sign steps of exactly lr: equal up to the decay's rounding.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# The MLP's own shapes, with the names its variables have; dense_2 is the output layer.
MLP_SHAPES = [(784, 700), (700,), (700, 500), (500,), (500, 10), (10,)]
MLP_NAMES = [f"dense_{layer}/{part}" for layer in range(3) for part in ("w", "b")]


def test_muon_follows_keras_muon_on_the_mlps_shapes_for_10_steps():
    rng = np.random.default_rng(0)
    start = [0.05 * rng.normal(size=shape).astype(np.float32) for shape in MLP_SHAPES]
    ours = [tf.Variable(value, name=name) for value, name in zip(start, MLP_NAMES)]
    theirs = [
        keras.Variable(value, name=name.replace("/", "_")) for value, name in zip(start, MLP_NAMES)
    ]
    # Keras's defaults (weight decay 0.004 on both paths, Moonlight's rms_rate 0.2), the output
    # layer on AdamW as Keras advises, and biases not decayed (the trainer's rule) in both.
    muon = Muon(1e-3, exclude_layers=["dense_2"], decays=is_weight_matrix)
    keras_muon = keras.optimizers.Muon(1e-3, exclude_layers=["dense_2"])
    keras_muon.exclude_from_weight_decay(var_list=theirs[1::2])
    for _ in range(10):
        grads = [tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in MLP_SHAPES]
        muon.apply_gradients(grads, ours)
        keras_muon.apply_gradients(zip(grads, theirs))
    assert [muon.takes_muon(v) for v in ours] == [True, False, True, False, False, False]
    for a, b, first, name in zip(ours, theirs, start, MLP_NAMES):
        moved = np.abs(a.numpy() - first).max()
        assert moved > 5e-3, name  # Each step moves every variable by ~lr.
        # XLA's matmuls and Keras's op-by-op ones round differently: 1e-6 of 1e-2 moved.
        np.testing.assert_allclose(
            a.numpy(), np.asarray(b.numpy()), rtol=0, atol=1e-6, err_msg=name
        )


def test_newton_schulz_reproduces_keras_golden_values():
    # keras/src/optimizers/muon_test.py test_Newton_Schulz: Muon's defaults, 5 steps.
    x = tf.constant([[0.2499, 0.9105], [0.2655, 0.8824]])
    want = [[-0.4422, 0.6457], [0.7285, 0.2968]]
    got = orthogonalize(x, 5, *Muon().muon_abc)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-3, atol=1e-3)  # Keras's tolerance.


def test_muon_reproduces_keras_single_step_golden_values():
    # keras/src/optimizers/muon_test.py test_muon_single_step: one step at learning rate 0.5,
    # no weight decay, Moonlight's scale (rms_rate 0.2) on the 2 x 2 matrix.
    var = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    Muon(0.5, weight_decay=0.0).apply_gradients([tf.constant([[1.0, 6.0], [7.0, 2.0]])], [var])
    want = [[0.988775, 1.887053], [2.873428, 3.97035]]
    np.testing.assert_allclose(var.numpy(), want, rtol=1e-2, atol=1e-2)  # Keras's tolerance.


@pytest.mark.parametrize("shape", [(64, 256), (96, 96), (256, 64)], ids=["wide", "square", "tall"])
def test_muon_follows_keras_muon_on_each_orientation_for_10_steps(shape):
    # The MLP's kernels are all tall ([in, out], in > out): here the wide one takes
    # Newton-Schulz untransposed, the square one at the branch's edge.
    rng = np.random.default_rng(1)
    start = 0.05 * rng.normal(size=shape).astype(np.float32)
    ours, theirs = tf.Variable(start, name="w"), keras.Variable(start, name="w")
    muon, keras_muon = Muon(1e-3), keras.optimizers.Muon(1e-3)
    for _ in range(10):
        grad = tf.constant(rng.normal(size=shape).astype(np.float32))
        muon.apply_gradients([grad], [ours])
        keras_muon.apply_gradients([(grad, theirs)])
    assert muon.takes_muon(ours)
    assert np.abs(ours.numpy() - start).max() > 1e-3  # A thousand times the tolerance below.
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs.numpy()), rtol=0, atol=1e-6)


ORIENTATIONS = {"wide": (64, 256), "square": (96, 96), "tall": (256, 64)}


@pytest.mark.parametrize("shape", ORIENTATIONS.values(), ids=ORIENTATIONS.keys())
def test_the_default_scale_is_keras_moonlight_adjustment(shape):
    assert Muon().muon_scale == "moonlight"
    factor = keras.optimizers.Muon().lr_adjust(tf.ones(shape))  # Keras's, on every element.
    np.testing.assert_allclose(update_scale(shape, "moonlight", 0.2), np.asarray(factor), rtol=1e-6)


# A [in, out] kernel is PyTorch's (out, in) weight transposed: the author's max(1, out / in).
SPECTRAL_SCALES = {"wide": (256 / 64) ** 0.5, "square": 1.0, "tall": 1.0}


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_the_spectral_scale_is_the_authors_rule(orientation):
    # One step from zero with the same gradient, no decay: the two scales differ only in the
    # factor on the same orthogonalized update, sqrt(max(1, out / in)) against Moonlight's
    # 0.2 * sqrt(max(in, out)).
    shape = ORIENTATIONS[orientation]
    grad = tf.constant(np.random.default_rng(2).normal(size=shape).astype(np.float32))
    moved = {}
    for muon_scale in ("moonlight", "spectral"):
        var = tf.Variable(tf.zeros(shape))
        Muon(1e-3, weight_decay=0.0, muon_scale=muon_scale).apply_gradients([grad], [var])
        moved[muon_scale] = -var.numpy()
    assert update_scale(shape, "spectral", 0.2) == SPECTRAL_SCALES[orientation]
    want = SPECTRAL_SCALES[orientation] / (0.2 * max(shape) ** 0.5)
    np.testing.assert_allclose(moved["spectral"], moved["moonlight"] * want, rtol=1e-5)
    # Orthogonalized, the update's singular values are near 1 (Newton-Schulz's S' in
    # [0.7, 1.2]): its spectral norm is about lr times the scale.
    top = np.linalg.svd(moved["spectral"], compute_uv=False)[0]
    assert 0.6e-3 * SPECTRAL_SCALES[orientation] < top < 1.3e-3 * SPECTRAL_SCALES[orientation]


def test_an_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="muon_scale must be one of moonlight, spectral"):
        Muon(muon_scale="keller")
