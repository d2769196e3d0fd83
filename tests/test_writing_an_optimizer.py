"""docs/writing-an-optimizer.md: its RMSprop, run exactly as the page shows it, does what the
page says: its equations, Keras's RMSprop, an --optimizer choice, two replicas, loss scaling,
the convergence suite, and the tests that run over every optimizer."""

import pathlib
import re
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from tests import test_distributed, test_mixed_precision, test_optimizers
from trainer import choices, optimizers
from trainer.config import TrainConfig
from trainer.convergence.suite import EXCEEDED, SADDLE, ConvergenceSuite
from trainer.distribution import strategies
from trainer.step.state import build_train_state

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "writing-an-optimizer.md"
NAME, MODULE = "rmsprop", "trainer.optimizers.rmsprop"
# The python block right after the line that names the file and ends in a colon.
FILE_BLOCK = re.compile(
    r"^[^\n]*`trainer/optimizers/rmsprop\.py`[^\n]*:\n\n```python\n(.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
# The line the page adds to trainer/choices.py's OPTIMIZERS: the python block after "its line".
CHOICES_LINE = re.compile(r"its line in\s+`OPTIMIZERS` is:\n\n```python\n(.*?)^```$", re.M | re.S)


def page_source() -> str:
    """The file's code, after as many blank lines as precede it on the page: tracebacks, and
    AutoGraph reading `update_step`'s source, then find it at the page's own line numbers."""
    text = PAGE.read_text(encoding="utf-8")
    [match] = FILE_BLOCK.finditer(text)
    return "\n" * text.count("\n", 0, match.start(1)) + match.group(1)


def page_choices_line() -> dict:
    """The page's line for trainer/choices.py's OPTIMIZERS, as the dict entry it is."""
    [match] = CHOICES_LINE.finditer(PAGE.read_text(encoding="utf-8"))
    return eval("{" + match.group(1) + "}")


@pytest.fixture(scope="module", autouse=True)
def page_rmsprop():
    """The page's file as the module `trainer.optimizers.rmsprop` and its line in
    trainer/choices.py, registered as importing that file would register it, but neither
    written into the source tree (other tests run beside this one); unregistered afterwards,
    and whatever held the name before put back."""
    registered, imported = optimizers.OPTIMIZERS.pop(NAME, None), sys.modules.pop(MODULE, None)
    listed = choices.OPTIMIZERS.pop(NAME, None)
    module = sys.modules[MODULE] = types.ModuleType(MODULE)
    module.__file__ = str(PAGE)
    try:
        with pytest.raises(TypeError, match="trainer/choices.py's OPTIMIZERS must hold 'rmsprop'"):
            exec(compile(page_source(), str(PAGE), "exec"), {"__name__": MODULE})
        choices.OPTIMIZERS.update(page_choices_line())
        exec(compile(page_source(), str(PAGE), "exec"), module.__dict__)
        yield module.RMSprop
    finally:
        optimizers.OPTIMIZERS.pop(NAME, None)
        choices.OPTIMIZERS.pop(NAME, None)
        if listed is not None:
            choices.OPTIMIZERS[NAME] = listed
        del sys.modules[MODULE]
        if registered is not None:
            optimizers.OPTIMIZERS[NAME] = registered
        if imported is not None:
            sys.modules[MODULE] = imported


@pytest.fixture(scope="module")
def train_split():
    return mnist.load("bundled").train


def numpy_rmsprop(start, gradient, steps, learning_rate, rho=0.9, epsilon=1e-7):
    """The page's equations in float64 NumPy: x after each update; `gradient(t, x)` is the
    gradient at update t (from 0)."""
    x, ms, path = np.asarray(start, np.float64), 0.0, []
    for t in range(steps):
        g = gradient(t, x)
        ms = rho * ms + (1 - rho) * g**2
        x = x - learning_rate * g / np.sqrt(ms + epsilon)
        path.append(x)
    return np.array(path)


def test_the_first_steps_follow_its_equations():
    grads = test_optimizers.GRADS
    expected = numpy_rmsprop((1.0, 2.0), lambda t, x: grads[t], len(grads), 0.1)
    # Step one: ms = 0.1 g^2, so each coordinate moves by 0.1 / sqrt(0.1) against its gradient.
    np.testing.assert_allclose(expected[0], [1 - 0.1**0.5, 2 + 0.1**0.5], rtol=1e-6)
    got = test_optimizers.run_steps(optimizers.create(NAME, 0.1), grads)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_it_agrees_with_keras_rmsprop_on_a_random_problem():
    # Both add epsilon inside the square root, so they agree at any epsilon; one as large as
    # 1e-2 would tell the other placement, sqrt(ms) + epsilon, apart. In float64, so rounding
    # hides no real difference; Keras keeps the learning rate in float32, so it is exact there.
    settings = dict(learning_rate=2**-6, rho=0.875, epsilon=1e-2)
    ours, keras = optimizers.create(NAME, **settings), tf.keras.optimizers.RMSprop(**settings)
    train = test_optimizers.train_on_a_random_regression
    start, trained = train(lambda g, w: ours.apply_gradients([g], [w]))
    _, by_keras = train(lambda g, w: keras.apply_gradients([(g, w)]))
    np.testing.assert_allclose(trained, by_keras, rtol=1e-9, atol=1e-12)
    assert np.abs(trained - start).max() > 0.1


def test_it_is_an_optimizer_choice_with_its_settings(page_rmsprop):
    made = optimizers.create(NAME, 0.01)
    assert type(made) is page_rmsprop and (made.rho, made.epsilon) == (0.9, 1e-7)
    assert optimizers.options(NAME) == ("rho", "epsilon")
    assert optimizers.create(NAME, 0.01, rho=0.95).rho == 0.95
    with pytest.raises(ValueError, match="optimizer 'rmsprop' takes no beta_1"):
        optimizers.create(NAME, 0.01, beta_1=0.9)
    with pytest.raises(ValueError, match=r"rmsprop: rho must be in \[0, 1\), got 1.0"):
        optimizers.create(NAME, 0.01, rho=1.0)
    config = TrainConfig(optimizer=NAME).validate()
    assert "_rmsprop_" in config.run_dir_name()


@pytest.mark.parametrize(
    "run",
    [
        lambda tmp_path, _: test_optimizers.test_state_round_trips_through_a_checkpoint(
            NAME, tmp_path
        ),
        lambda *_: test_optimizers.test_the_xla_compiled_rule_takes_the_op_by_op_rule_steps(NAME),
        lambda _, split: test_distributed.test_every_replica_copy_stays_identical_on_different_data(
            NAME, split
        ),
        lambda *_: test_mixed_precision.test_a_scaled_step_is_the_unscaled_step(NAME),
    ],
    ids=["checkpoint", "xla-update", "replica-copies", "loss-scaling"],
)
def test_the_tests_over_every_optimizer_pass_for_it(run, tmp_path, train_split):
    # Those tests collected OPTIMIZERS' names before the page's optimizer existed.
    run(tmp_path, train_split)


@pytest.mark.slow  # Seconds of training; the page's code runs in the fast tier elsewhere.
def test_it_trains_on_two_replicas_and_loss_scaling_takes_the_same_steps(train_split):
    # Each replica sees its own half of every batch; the loss scale, 2^15, is a power of two,
    # so scaled and unscaled float32 gradients are the same numbers.
    states = []
    for loss_scaling in (False, True):
        strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
        optimizer = optimizers.create(NAME, 1e-3, loss_scaling=loss_scaling)
        state = build_train_state(strategy, test_distributed.CONFIG, 1, optimizer=optimizer)
        batches = mnist.train_dataset(train_split, test_distributed.BATCH, seed=0)
        iterator = iter(strategy.experimental_distribute_dataset(batches))
        first, then = state.train(iterator, 1), state.train(iterator, 19)
        assert then["loss"] < 0.8 * first["loss"], (first, then)
        assert state.step == 20
        weights_and_slots = [
            *state.model.trainable_variables,
            *[slot for slots in optimizer.slots for slot in slots],
        ]
        for variable in weights_and_slots:
            copy_0, copy_1 = test_distributed.replica_copies(variable)
            np.testing.assert_array_equal(copy_0, copy_1, err_msg=variable.name)
        if loss_scaling:
            assert then["loss_scale"] == 2.0**15 and then["skipped_steps"] == 0
        states.append([test_distributed.replica_copies(v)[0] for v in weights_and_slots])
    for unscaled, scaled in zip(*states):
        np.testing.assert_array_equal(unscaled, scaled)


def test_its_runs_in_the_convergence_suite_follow_its_equations():
    learning_rates = (1e-3, 1e-2, 1e-1)
    results = ConvergenceSuite((NAME,), learning_rates)(init_val=2.0, max_iters=200)
    # The gradient of the notebook's loss, 2x^4 + 3x^3 + 2.
    expected = numpy_rmsprop(
        np.full(3, 2.0), lambda t, x: 8 * x**3 + 9 * x**2, 200, np.array(learning_rates)
    )
    for lane, learning_rate in enumerate(learning_rates):
        result = results[NAME, learning_rate]
        assert result.outcome == EXCEEDED and result.iteration == 200
        np.testing.assert_allclose(result.path, expected[:, lane], rtol=1e-4, atol=1e-6)
        # From 2.0 it creeps toward the saddle without crossing it.
        assert np.all(np.diff(result.path) < 0) and result.final > SADDLE
    assert results[NAME, 0.1].final < 1e-3
