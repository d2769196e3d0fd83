"""The whole step as one XLA program where one replica is in sync, and the same update as the
step XLA compiles in pieces and as the step run op by op.

Each way of compiling is forced (`jit_compile`, `xla_update`), whatever `--jit_compile=auto`
would choose on this machine."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from tests.test_distributed import BATCH, CONFIG  # A small MLP at a constant learning rate.
from trainer.distribution import strategies
from trainer.step.state import build_train_state

STEPS = 4
# What a step's compiled loop holds beside the step itself: the batch, the loop's counter.
LOOP_OPS = {"IteratorGetNext", "AddV2", "Const", "Identity", "NoOp"}


@pytest.fixture(scope="module")
def train_split():
    return mnist.load("bundled").train


def built(strategy_name, replicas, one_program=None, **settings):
    strategy = strategies.create_strategy(strategy_name, cpu_replicas=replicas)
    config = dataclasses.replace(CONFIG, **settings)
    state = build_train_state(strategy, config, steps_per_epoch=STEPS, one_program=one_program)
    return strategy, state


def trained(train_split, one_program=None, **settings):
    strategy, state = built("one_device", 1, one_program, **settings)
    dataset = mnist.train_dataset(train_split, BATCH, seed=0)
    state.train(iter(strategy.experimental_distribute_dataset(dataset)), STEPS)
    return state


def loop_body(strategy, state, train_split):
    """The ops of one step's iteration of the compiled loop, and the functions it calls."""
    dataset = mnist.train_dataset(train_split, BATCH, seed=0)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    graph = state.train_loop.get_concrete_function(iterator, tf.constant(1)).graph.as_graph_def()
    library = {f.signature.name: f for f in graph.library.function}
    [loop] = [node for node in graph.node if node.op == "While"]
    body = library[loop.attr["body"].func.name].node_def
    called = [library[n.attr["f"].func.name] for n in body if n.op == "StatefulPartitionedCall"]
    return {n.op for n in body if n.op != "StatefulPartitionedCall"}, called


@pytest.mark.parametrize(
    "strategy_name, replicas, jit_compile, xla_update, one_program",
    [
        ("one_device", 1, "true", True, True),
        ("mirrored", 1, "true", True, True),  # Its merge_call traces into the same program.
        ("one_device", 1, "true", False, False),  # --noxla_update keeps the update out of XLA.
        ("one_device", 1, "false", True, False),
        ("mirrored", 2, "true", True, False),  # XLA compiles no program over two devices.
    ],
)
def test_one_replica_runs_each_step_as_one_xla_program(
    strategy_name, replicas, jit_compile, xla_update, one_program, train_split
):
    strategy, state = built(strategy_name, replicas, jit_compile=jit_compile, xla_update=xla_update)
    ops, called = loop_body(strategy, state, train_split)
    compiled = [f for f in called if f.attr["_XlaMustCompile"].b]
    if one_program:
        # Nothing in the step runs outside the one compiled function.
        assert ops <= LOOP_OPS, ops - LOOP_OPS
        assert len(called) == len(compiled) == 1, [f.signature.name for f in called]
        inside = {n.op for n in compiled[0].node_def}
        assert {"MatMul", "ReluGrad", "AssignVariableOp", "AssignAddVariableOp"} <= inside
    else:
        assert ops - LOOP_OPS  # The sum, the norm or the update runs op by op.


@pytest.mark.parametrize(
    "settings",
    [
        {"optimizer": "adam"},
        # The slow tier: transforms, the rest of base.py's hooks, the micro-batch loop, SAM.
        pytest.param(
            {"optimizer": "adamw", "clip_global_norm": 0.1, "ema_decay": 0.9},
            marks=pytest.mark.slow,
        ),
        pytest.param({"optimizer": "schedule_free_adamw"}, marks=pytest.mark.slow),
        pytest.param({"optimizer": "muon"}, marks=pytest.mark.slow),
        pytest.param(
            {"optimizer": "momentum", "grad_accum_steps": 2, "sam_rho": 0.05},
            marks=pytest.mark.slow,
        ),
    ],
    ids=lambda settings: "-".join(str(v) for v in settings.values()),
)
def test_the_one_program_takes_the_steps_of_the_step_in_pieces_and_op_by_op(settings, train_split):
    one_program = trained(train_split, jit_compile="true", **settings)
    others = [
        trained(train_split, one_program=False, jit_compile="true", **settings),
        trained(train_split, jit_compile="false", xla_update=False, **settings),
    ]
    for state in (one_program, *others):
        assert state.step == STEPS
        assert float(state.train_metrics.count.read_value()) == STEPS * BATCH
    for other in others:
        pairs = zip(one_program.optimizer.variables, other.optimizer.variables)
        for a, b in [*zip(one_program.model.variables, other.model.variables), *pairs]:
            # XLA fuses and reorders float32 arithmetic: equal up to rounding, not bit for bit.
            # Where a gradient is near 0, Adam's m / sqrt(v) carries its rounding into a step
            # of up to the learning rate (1e-2): 1e-5 is a thousandth of that.
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.name)
        assert one_program.train_metrics.result() == pytest.approx(
            other.train_metrics.result(), rel=1e-5
        )


def test_the_one_program_skips_a_float16_overflow_whole(train_split):
    strategy, state = built("one_device", 1, jit_compile="true", precision="mixed_float16")
    images, labels = next(iter(mnist.train_dataset(train_split, BATCH, seed=0)))
    start = [v.numpy() for v in state.model.trainable_variables]
    overflow = tf.data.Dataset.from_tensors((images * 1e6, labels))  # Beyond float16's range.
    state.train_loop(iter(overflow), tf.constant(1))
    optimizer = state.optimizer
    assert int(optimizer.skipped_steps.numpy()) == 1 and int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.loss_scale.numpy()) == 2.0**14
    for before, variable in zip(start, state.model.trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())
    state.train_loop(iter(tf.data.Dataset.from_tensors((images, labels))), tf.constant(1))
    assert int(optimizer.iterations.numpy()) == 1 and state.step == 2
    assert not np.array_equal(start[0], state.model.trainable_variables[0].numpy())


def test_the_one_program_traces_once(train_split):
    strategy, state = built("one_device", 1, jit_compile="true")
    iterator = iter(mnist.train_dataset(train_split, BATCH, seed=0))
    for steps in (1, 3, 2):
        state.train_loop(iterator, tf.constant(steps))
    assert state.train_loop.experimental_get_tracing_count() == 1
    assert state.step == 6
