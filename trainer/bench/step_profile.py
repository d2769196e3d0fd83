"""Where a training step's time goes, read from a profiler trace of our compiled loop.

`step_time_breakdown` traces one epoch of the trainer (after an untimed one, so tracing and
XLA compilation stay out) and groups the host's op self time, as xprof's `framework_op_stats`
tool reports it, into the whole step when XLA compiles it as one program (`--jit_compile` on
one replica), matmuls, the optimizer update, the forward and backward pass when XLA compiles
them alone (`--jit_compile` on several replicas), the gradient-norm reduction, the input
pipeline and the rest. Inside the one program the host trace sees no ops: its share is the
whole step's compute, matmuls, gradient norm and update together.

`framework_op_stats` counts only synchronous kernels. Asynchronous ones (the
StatefulPartitionedCall that runs each variable's XLA-compiled update, IteratorGetNext) are in
the trace as `ExecutorState::ProcessAsync::Start` events yet missing from its table, so
`_async_kernels` reads them from the same xplane.pb and adds them.

Self time is summed over every host thread: a share is of the CPU threads' busy-or-blocked
time, not of the step's wall time. A prefetch thread that waits for its next element counts.
"""

import collections
import json
import pathlib
import re
import tempfile

import tensorflow as tf
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from xprof.convert import raw_to_tool_data

from trainer.bench import training as bench_training
from trainer.optimizers import Optimizer

TOP_OPS = 5

# The function each variable's update compiles as (base.py): its XLA kernels are `XLA:<it>`.
UPDATE_FUNCTION = Optimizer._rule_and_transforms.__name__
# The function the whole step compiles as, on one replica (steps.py's make_train_step).
STEP_FUNCTION = "train_step"

# First match wins; a predicate sees (op type, op name) as the converter reports them.
GROUPS = (
    ("xla_whole_step", lambda kind, name: kind == f"XLA:{STEP_FUNCTION}"),
    # The optimizer's update: XLA-compiled per variable, or op by op (--noxla_update).
    ("update", lambda kind, name: kind == f"XLA:{UPDATE_FUNCTION}" or "update_step" in name),
    # Any other XLA program is the forward and backward pass (--jit_compile on several
    # replicas): its matmuls run inside it, where the host trace does not break it down.
    ("xla_forward_backward", lambda kind, name: kind.startswith(("XLA:", "XlaLaunch", "_Xla"))),
    ("grad_norm", lambda kind, name: kind == "L2Loss" or "global_norm/" in name),
    ("matmul", lambda kind, name: "MatMul" in kind),  # MatMul, _MklMatMul, fused kinds.
    ("input", lambda kind, name: kind == "Dataset" or "Iterator" in kind),
)
OTHER = "other"


def step_time_breakdown(
    trainer: bench_training.OurTrainer | None = None, trace_dir: str | None = None
) -> dict:
    """Shares of host self time by group, the top op types, and ms per step of one traced
    epoch. The trace is kept (and its directory reported) only when `trace_dir` is given."""
    trainer = trainer or bench_training.cached_trainer(
        "one_device", 1, bench_training.BATCH_SIZES[0]
    )
    trainer.run()  # Untimed: traces the loop and compiles the XLA updates.
    with tempfile.TemporaryDirectory() as scratch:
        logdir = trace_dir or scratch
        # Level 3 also records the cheap kernels level 2 leaves out, at no measurable cost.
        tf.profiler.experimental.start(
            logdir, tf.profiler.experimental.ProfilerOptions(host_tracer_level=3)
        )
        try:
            seconds = trainer.run()
        finally:
            tf.profiler.experimental.stop()
        # The profiler writes plugins/profile/<timestamp>/<host>.xplane.pb; newest last.
        xplanes = sorted(map(str, pathlib.Path(logdir).glob("plugins/profile/*/*.xplane.pb")))
        if not xplanes:
            raise RuntimeError(f"the profiler wrote no xplane.pb under {logdir}")
        self_us = _op_self_times(xplanes[-1])

    by_group = dict.fromkeys([*(group for group, _ in GROUPS), OTHER], 0.0)
    by_type = collections.Counter()
    for (kind, name), us in self_us.items():
        by_group[_group(kind, name)] += us
        by_type[kind] += us
    total = sum(self_us.values())
    b = f"b{trainer.config.batch_size}_"
    results = {b + "ms_per_step": 1e3 * seconds / trainer.steps_per_epoch}
    results.update({b + f"share_{group}": us / total for group, us in by_group.items()})
    results.update(
        {
            b + f"top{rank}_op": f"{kind} {us / total:.0%}"
            for rank, (kind, us) in enumerate(by_type.most_common(TOP_OPS), 1)
        }
    )
    if trace_dir:
        results[b + "trace_dir"] = str(pathlib.Path(xplanes[-1]).parent)
    return results


def _group(kind: str, name: str) -> str:
    return next((group for group, matches in GROUPS if matches(kind, name)), OTHER)


def _op_self_times(xplane: str) -> collections.Counter:
    """Host self time in us by (op type, op name): the converter's table plus the
    asynchronous kernels it leaves out."""
    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane], "framework_op_stats", {})
    if not data:
        raise RuntimeError(f"xprof's framework_op_stats found nothing in {xplane}")
    tables = json.loads(data)
    table = tables[0] if isinstance(tables, list) else tables
    column = {col["id"]: i for i, col in enumerate(table["cols"])}
    self_us = collections.Counter()
    for row in table["rows"]:
        cell = [c.get("v") for c in row["c"]]
        kind, name = cell[column["type"]], cell[column["operation"]]
        if cell[column["host_or_device"]] == "Host" and kind != "IDLE":
            self_us[kind, name] += cell[column["total_self_time"]]
    counted_names = {name for _, name in self_us}
    counted_events = {f"{name}:{kind}" for kind, name in self_us}
    for (kind, name), us in _async_kernels(xplane, counted_events).items():
        if name not in counted_names:  # A newer converter may count it already.
            self_us[kind, name] += us
    return self_us


def _async_kernels(xplane: str, counted_events: set[str]) -> collections.Counter:
    """Self time in us of each asynchronous kernel's start, by (op type, op name).

    An async kernel's work runs inside its start event; TF ops nested in it are already in the
    converter's table (`counted_events`) and are subtracted. A kernel that ran an XLA
    executable is typed `XLA:<function>`, after the compiled function it ran.
    """
    space = xplane_pb2.XSpace()
    space.ParseFromString(pathlib.Path(xplane).read_bytes())
    self_us = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        stat_name = {i: m.name for i, m in plane.stat_metadata.items()}

        def stats(event):
            return {
                stat_name[s.metadata_id]: stat_name.get(s.ref_value) or s.str_value
                for s in event.stats
            }

        for line in plane.lines:
            events = sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps))
            for i, start in enumerate(events):
                if plane.event_metadata[start.metadata_id].name != (
                    "ExecutorState::ProcessAsync::Start"
                ):
                    continue
                kernel = stats(start)
                kind, name = kernel.get("kernel_type", "?"), kernel.get("name", "?")
                end, nested_ps = start.offset_ps + start.duration_ps, 0
                for inner in events[i + 1 :]:
                    if inner.offset_ps >= end:
                        break
                    if plane.event_metadata[inner.metadata_id].name in counted_events:
                        nested_ps += inner.duration_ps
                    module = stats(inner).get("hlo_module")
                    if module:
                        kind = "XLA:" + _function_name(module)
                self_us[kind, name] += (start.duration_ps - nested_ps) / 1e6
    return self_us


def _function_name(hlo_module: str) -> str:
    # "a_inference__rule_and_transforms_534__.1" -> "_rule_and_transforms"
    match = re.search(r"inference_(\w+?)_\d+__", hlo_module)
    return match.group(1) if match else hlo_module
