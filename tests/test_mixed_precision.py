"""Mixed precision: bfloat16/float16 compute over float32 weights, our dynamic loss scaling, and
the XLA-compiled step, from the optimizer up to the entry function and the export."""

import dataclasses
import os
import re
import signal
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from models.mlp import MLP
from tests.toolkit import (
    WEIGHTS_AND_OPTIMIZER,
    Pause,
    assert_same_tensors,
    checkpoint_path,
    checkpoint_tensors,
    command_line,
    environment,
    finish,
    scalars,
    start_module,
)
from trainer import optimizers
from trainer.config import ConfigError, TrainConfig
from trainer.distribution import strategies
from trainer.optimizers.base import INITIAL_LOSS_SCALE, DynamicLossScale
from trainer.recipe import train_and_evaluate
from trainer.step.machine_fit import uses_xla

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# As tests/test_train.py's TINY: 100 steps an epoch on two logical CPU replicas.
TINY = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(64,),
    batch_size=500,
    epochs=2,
    steps_per_loop=40,
    learning_rate=3e-3,
    warmup_epochs=0.0,
    data_source="bundled",
)


def scaled_optimizer(name="adam", **loss_scale):
    x = tf.Variable([1.0, 2.0])
    optimizer = optimizers.OPTIMIZERS[name](0.1, loss_scaling=DynamicLossScale(**loss_scale))
    optimizer.build([x])
    return x, optimizer


def state_of(x, optimizer):
    return [
        x.numpy().copy(),
        int(optimizer.iterations),
        *[slot.numpy().copy() for slots in optimizer.slots for slot in slots],
    ]


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_a_scaled_step_is_the_unscaled_step(name):
    # The scale is a power of two: scaling and unscaling are exact in float32.
    x, scaled = scaled_optimizer(name)
    y = tf.Variable([1.0, 2.0])
    plain = optimizers.create(name, 0.1)
    for g in ([0.5, -1.0], [-0.25, 2.0], [3.0, 1e-3]):
        scaled.apply_gradients([scaled.scale_loss(tf.constant(g))], [x])
        plain.apply_gradients([tf.constant(g)], [y])
    np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert float(scaled.loss_scale) == INITIAL_LOSS_SCALE == 2.0**15
    assert float(scaled.grad_norm) == pytest.approx(float(plain.grad_norm))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_an_overflow_skips_the_step_and_halves_the_scale(bad):
    x, optimizer = scaled_optimizer()
    optimizer.apply_gradients([tf.constant([1.0, 1.0])], [x])
    before = state_of(x, optimizer)
    optimizer.apply_gradients([tf.constant([bad, 1.0])], [x])
    after = state_of(x, optimizer)
    for a, b in zip(before, after):  # Weights, step counter and every slot untouched.
        np.testing.assert_array_equal(a, b)
    assert float(optimizer.loss_scale) == INITIAL_LOSS_SCALE / 2
    assert int(optimizer.skipped_steps) == 1 and int(optimizer.finite_steps) == 0
    assert int(optimizer.first_nonfinite_step) == 0  # An overflow is not divergence.
    optimizer.apply_gradients([tf.constant([1.0, 1.0])], [x])
    assert int(optimizer.iterations) == 2  # The next finite step is step 2.


def test_the_scale_doubles_after_the_growth_interval_and_never_falls_below_one():
    x, optimizer = scaled_optimizer("gd", growth_interval=3)

    @tf.function
    def step(g):
        optimizer.apply_gradients([g], [x])

    ones, inf = tf.constant([1.0, 1.0]), tf.constant([np.inf, 1.0])
    scales = []
    for g in [ones] * 7 + [inf] * 18 + [ones] * 3:
        step(g)
        scales.append(float(optimizer.loss_scale))
    assert scales[:7] == [2**15, 2**15, 2**16, 2**16, 2**16, 2**17, 2**17]
    assert scales[7:25] == [2.0**e for e in range(16, -1, -1)] + [1.0]  # Halving, down to 1.
    assert scales[25:] == [1.0, 1.0, 2.0]
    assert int(optimizer.skipped_steps) == 18 and int(optimizer.iterations) == 10
    # Only the overflow at scale 1 (the 18th) is divergence, noted as the batch it took: the
    # 25th, after 7 steps applied and 17 skipped.
    assert int(optimizer.first_nonfinite_step) == 25
    assert int(optimizer.steps_taken) == 28
    assert step.experimental_get_tracing_count() == 1


def test_every_replica_skips_when_one_replica_overflows():
    strategy = strategies.create_strategy("mirrored", cpu_replicas=2)
    with strategy.scope():
        x = tf.Variable([1.0, 2.0])
        optimizer = optimizers.create("adam", 0.1, loss_scaling=True)
        optimizer.build([x])

    @tf.function
    def step(overflow_on_replica):
        def replica_step():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            bad = tf.equal(replica, overflow_on_replica)
            optimizer.apply_gradients([tf.where(bad, np.inf, 1.0) * tf.ones([2])], [x])

        strategy.run(replica_step)

    step(tf.constant(-1))  # No replica overflows.
    before = [v.numpy().copy() for v in x.values]
    step(tf.constant(1))  # Replica 1 overflows; replica 0 does not.
    after = [v.numpy().copy() for v in x.values]
    np.testing.assert_array_equal(after[0], after[1])
    np.testing.assert_array_equal(after[0], before[0])
    assert [float(v) for v in optimizer.loss_scale.values] == [INITIAL_LOSS_SCALE / 2] * 2
    assert [int(v) for v in optimizer.iterations.values] == [1, 1]


@pytest.mark.parametrize(
    "precision, dtype",
    [("float32", tf.float32), ("mixed_bfloat16", tf.bfloat16), ("mixed_float16", tf.float16)],
)
def test_the_model_computes_in_the_low_dtype_over_float32_weights(precision, dtype):
    model = MLP(mnist.NUM_PIXELS, [32], mnist.NUM_CLASSES, compute_dtype=dtype)
    images = tf.random.stateless_uniform([8, mnist.NUM_PIXELS], seed=[0, 0])

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            logits = model(x)
            loss = tf.reduce_mean(logits**2)
        return logits, tape.gradient(loss, model.trainable_variables)

    logits, grads = forward_backward(images)
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)
    assert logits.dtype == tf.float32 and all(g.dtype == tf.float32 for g in grads)
    graph = forward_backward.get_concrete_function(images).graph
    matmul_dtypes = {op.get_attr("T") for op in graph.get_operations() if op.type == "MatMul"}
    assert matmul_dtypes == {dtype}


OTHER_JIT_COMPILE = "false" if uses_xla("auto") else "true"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny run in each precision (and float32 with the step compiled the other way)."""
    logdir = str(tmp_path_factory.mktemp("precision"))
    return {
        name: train_and_evaluate(dataclasses.replace(TINY, logdir=logdir, **settings))
        for name, settings in {
            "float32": {},
            "mixed_bfloat16": {"precision": "mixed_bfloat16"},
            "mixed_float16": {"precision": "mixed_float16"},
            # A run name of its own: it would name the float32 run, finished by then.
            # The other way of computing than the default's (--jit_compile=auto) on this machine.
            "jit_compile": {"jit_compile": OTHER_JIT_COMPILE, "run_name": "jit"},
        }.items()
    }


def test_every_precision_learns_and_names_its_run(runs):
    for name, result in runs.items():
        assert result.test_accuracy > 0.9, name
    assert abs(runs["mixed_float16"].test_accuracy - runs["float32"].test_accuracy) < 0.01
    assert os.path.basename(runs["mixed_bfloat16"].run_dir).endswith("_bf16")
    assert os.path.basename(runs["mixed_float16"].run_dir).endswith("_fp16")
    # The same computation, so the same run name unless told another.
    assert dataclasses.replace(TINY, jit_compile="true").run_dir_name() == TINY.run_dir_name()


def test_loss_scaling_is_logged_and_checkpointed(runs):
    run_dir = runs["mixed_float16"].run_dir
    logged = scalars(run_dir)
    assert logged["optim/loss_scale"] and all(s >= 1 for s in logged["optim/loss_scale"])
    assert len(logged["optim/skipped_steps"]) == len(logged["train/loss"])
    assert "optim/loss_scale" not in scalars(runs["mixed_bfloat16"].run_dir)
    reader = tf.train.load_checkpoint(checkpoint_path(run_dir, 200))
    keys = reader.get_variable_to_shape_map()
    for name in ("loss_scale", "finite_steps", "skipped_steps"):
        [key] = [k for k in keys if k.startswith(f"optimizer/{name}/")]
        assert reader.get_tensor(key).dtype in (np.float32, np.int64)
    weights = [k for k in keys if k.startswith("model/")]
    assert all(reader.get_tensor(k).dtype == np.float32 for k in weights)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_the_export_serves_float32_probabilities_whatever_the_precision(runs, precision):
    served = tf.saved_model.load(runs[precision].export_dir)
    test = mnist.load("bundled").test
    images = tf.constant(test.images[:256])
    probabilities = served.signatures["serving_default"](images=images)["probabilities"]
    from_pixels = served.signatures["classify_pixels"](pixels=mnist.to_features(images))[
        "probabilities"
    ]
    assert probabilities.dtype == from_pixels.dtype == tf.float32
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.numpy().argmax(axis=1) == test.labels[:256]).mean() > 0.9


def test_flags_txt_records_what_jit_compile_auto_chose(runs):
    chose = "false" if OTHER_JIT_COMPILE == "true" else "true"
    for name, jit_compile in {"float32": chose, "jit_compile": OTHER_JIT_COMPILE}.items():
        with open(os.path.join(runs[name].run_dir, "flags.txt")) as f:
            assert f"\n--jit_compile={jit_compile}\n" in f.read()


def test_with_or_without_xla_the_step_takes_the_same_steps(runs):
    want, got = (
        checkpoint_tensors(checkpoint_path(runs[name].run_dir, 200))
        for name in ("float32", "jit_compile")
    )
    assert len(want) == 4
    # Only float32 rounding tells XLA's program from the op-by-op kernels.
    assert_same_tensors(got, want, rtol=1e-3, atol=1e-4)


def test_resuming_in_another_precision_is_refused(runs):
    result = runs["float32"]
    other = dataclasses.replace(
        TINY,
        logdir=os.path.dirname(result.run_dir),
        run_name=os.path.basename(result.run_dir),
        precision="mixed_bfloat16",
    )
    with pytest.raises(
        ConfigError,
        match=r"--precision=mixed_bfloat16: the run in .* was "
        r"started with --precision=float32",
    ):
        train_and_evaluate(other)


# 200 deterministic steps on 2 logical CPU replicas, a checkpoint every 25. At 2^30 the float16
# gradient of the logits alone (about 2^30 / 250 per example) overflows on any machine: the
# first steps are skipped while the scale halves, and growing it every 10 finite steps makes it
# overflow again every so often.
FLOAT16 = dataclasses.replace(
    TINY,
    steps_per_loop=5,
    checkpoint_every_steps=25,
    deterministic=True,
    precision="mixed_float16",
    initial_loss_scale=2.0**30,
    loss_scale_growth_interval=10,
)


def optimizer_counters(path) -> dict[str, int]:
    """{iterations, skipped_steps} of a checkpoint: the steps applied and those skipped."""
    reader = tf.train.load_checkpoint(str(path))
    return {
        name: int(reader.get_tensor(f"optimizer/{name}/.ATTRIBUTES/VARIABLE_VALUE"))
        for name in ("iterations", "skipped_steps")
    }


def test_a_float16_run_killed_and_resumed_ends_bit_for_bit_as_if_never_killed(tmp_path):
    """The loss scale and its counters are in the checkpoint, so the resumed run scales (and
    skips) exactly as the uninterrupted one; and a run's steps count the skipped ones, so it
    resumes at the batch after the checkpoint's last, skipped or not."""

    def start(run_name, **options):
        return start_module(
            "trainer.train",
            *command_line(FLOAT16),
            f"--logdir={tmp_path}",
            f"--run_name={run_name}",
            stderr=subprocess.STDOUT,
            **options,
        )

    pause = Pause(tmp_path / "pause", 50)  # Killed while held after saving ckpt-50.
    uninterrupted = start("uninterrupted")
    killed = start("killed", env={**environment(), **pause.env()})
    pause.wait(killed)
    killed.send_signal(signal.SIGKILL)
    assert finish(killed).returncode == -signal.SIGKILL
    done = finish(uninterrupted)
    assert done.returncode == 0, done.stdout[-3000:]
    at_kill = optimizer_counters(checkpoint_path(tmp_path / "killed", 50))
    assert at_kill["skipped_steps"] > 0 and sum(at_kill.values()) == 50, at_kill
    resumed = finish(start("killed"))
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert int(re.search(r"resumed from \S+ at step (\d+)", resumed.stdout).group(1)) == 50
    want, got = (
        checkpoint_tensors(checkpoint_path(tmp_path / run_name, 200), WEIGHTS_AND_OPTIMIZER)
        for run_name in ("uninterrupted", "killed")
    )
    assert any("loss_scale" in key for key in want)
    assert_same_tensors(got, want)
    # Every training batch taken once an epoch: applied, or skipped for an overflow.
    final = optimizer_counters(checkpoint_path(tmp_path / "killed", 200))
    assert sum(final.values()) == 200 and final["skipped_steps"] > at_kill["skipped_steps"]
