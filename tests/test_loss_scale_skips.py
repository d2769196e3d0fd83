"""Float16's skipped steps take their batches: a run's step, its checkpoints' numbers, its data
position and the step it diverged at count them, so a resumption or a divergence retry goes on
from the batch after the last one taken. In process, on the optimizer and the train state."""

import numpy as np
import pytest
import tensorflow as tf

from trainer import optimizers
from trainer.config import ConfigError, TrainConfig
from trainer.distribution import strategies
from trainer.loop.resumable import Resumable
from trainer.optimizers.base import DynamicLossScale
from trainer.run.checkpoints import RunCheckpoints
from trainer.step.state import DivergenceError, build_train_state

# A float16 train state whose loss scale starts at 4: two overflows bring it to 1, where the
# next is divergence.
FLOAT16 = TrainConfig(
    hidden_sizes=(8,),
    precision="mixed_float16",
    initial_loss_scale=4.0,
    loss_scale_growth_interval=100,
    xla_update=False,  # Nothing here is about XLA; op by op builds faster.
)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
def test_steps_taken_count_the_skipped_steps_and_divergence_names_the_batch(compiled):
    x = tf.Variable([1.0, 2.0])
    optimizer = optimizers.create("gd", 0.1, loss_scaling=DynamicLossScale(initial_scale=2.0))

    def step(g):
        optimizer.apply_gradients([tf.constant(g)], [x])

    step = tf.function(step) if compiled else step
    step([np.inf, 1.0])  # Skipped; the scale halves to 1.
    assert int(optimizer.steps_taken) == 1 and int(optimizer.first_nonfinite_step) == 0
    step([np.inf, 1.0])  # At scale 1: divergence, at the second batch.
    assert int(optimizer.first_nonfinite_step) == 2
    assert int(optimizer.iterations) == 0 and int(optimizer.skipped_steps) == 2
    assert int(optimizer.steps_taken) == 2


def test_without_loss_scaling_the_steps_taken_are_the_steps_applied():
    x = tf.Variable([1.0, 2.0])
    optimizer = optimizers.create("gd", 0.1)
    for g in ([1.0, 1.0], [np.nan, 1.0], [1.0, 1.0]):
        optimizer.apply_gradients([tf.constant(g)], [x])
    assert int(optimizer.steps_taken) == int(optimizer.iterations) == 3
    assert int(optimizer.first_nonfinite_step) == 2


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"initial_scale": 0.0}, "initial_scale must be positive and finite, got 0.0"),
        ({"initial_scale": np.inf}, "initial_scale must be positive and finite, got inf"),
        ({"growth_interval": 0}, "growth_interval must be at least 1, got 0"),
    ],
)
def test_bad_loss_scale_settings_are_refused(settings, error):
    with pytest.raises(ValueError, match=error):
        DynamicLossScale(**settings)


def test_the_loss_scale_settings_name_the_run_and_a_resumption_keeps_them():
    config = TrainConfig(
        precision="mixed_float16", initial_loss_scale=2.0**30, loss_scale_growth_interval=10
    )
    assert "_ls1073741824.0_lsgrow10_" in config.run_dir_name()
    assert "_ls" not in TrainConfig(precision="mixed_float16").run_dir_name()
    other = TrainConfig(precision="mixed_float16", initial_loss_scale=2.0**16)
    with pytest.raises(ConfigError, match=r"--initial_loss_scale=65536.0: the run in .* was "):
        other.check_resumable(config.flagfile(), "runs/r/flags.txt")


class Batches:
    """Inputs' stand-in for Resumable: notes the position each iterator it hands out starts
    from (the real one needs MNIST and a tf.data pipeline)."""

    def __init__(self):
        self.positions = []

    def train_batches(self, step=0):
        self.positions.append(step)
        return iter(())


@pytest.fixture
def strategy():
    """2 replicas. A float16 train state on CPUs turns grappler's remapper off for the process;
    it is back on afterwards."""
    before = tf.config.optimizer.get_experimental_options()
    yield strategies.create_strategy("mirrored", cpu_replicas=2)
    tf.config.optimizer.set_experimental_options({"remapping": before.get("remapping", True)})


def take(strategy, state, *finite):
    """One step per entry, as summed gradients (cross-replica context): small ones, or inf."""
    variables = state.model.trainable_variables
    for ok in finite:
        with strategy.scope():
            grads = [tf.fill(v.shape, 1e-3 if ok else np.inf) for v in variables]
            state.optimizer.apply_gradients(grads, variables)


def test_a_divergence_retry_and_a_resumption_count_the_skipped_batches(strategy, tmp_path):
    state = build_train_state(strategy, FLOAT16, steps_per_epoch=10)
    assert float(state.optimizer.loss_scale.numpy()) == FLOAT16.initial_loss_scale
    checkpoints = RunCheckpoints(state.checkpoint(), str(tmp_path), max_to_keep=3)
    take(strategy, state, True, True, True, False, False)  # 3 applied, 2 skipped: scale 1.
    assert state.step == state.data_position == 5 and int(state.optimizer.iterations.numpy()) == 3
    assert checkpoints.save(state.step).endswith("ckpt-5")
    take(strategy, state, True, False)  # Batch 6 applied; batch 7 overflows at scale 1.
    bad_step = int(state.optimizer.first_nonfinite_step.numpy())
    assert bad_step == 7

    # What TrainState.train raises; back to ckpt-5, past the batches of steps 6-7.
    batches = Batches()
    run = Resumable(state, batches, checkpoints, retries=1)
    assert run.recover(DivergenceError(f"step {bad_step}: not finite", bad_step)) == 5
    assert state.skipped_windows.numpy().tolist() == [[6, 7]]
    assert batches.positions == [7]  # Step 6 takes the batch after the one that diverged.

    take(strategy, state, True)
    assert state.step == 6 and state.data_position == 8
    checkpoints.save(state.step)
    resumed = build_train_state(strategy, FLOAT16, steps_per_epoch=10)
    RunCheckpoints(resumed.checkpoint(), str(tmp_path), max_to_keep=3).restore()
    assert resumed.step == 6 and resumed.data_position == 8
    assert int(resumed.optimizer.iterations.numpy()) == 4  # The schedule's and bias correction's.
