"""The step profile on a tiny trainer: a real trace, read back by xprof's converter.

Each way of compiling the step is profiled on every machine (`--jit_compile` forced both
ways; with it, the whole step as one program, or in pieces as several replicas compile it),
whatever `--jit_compile=auto` would choose here."""

import dataclasses
import pathlib
import tempfile

import pytest

from trainer.bench import step_profile as bench_profile
from trainer.bench.one_program import InPieces
from trainer.bench.training import OurTrainer
from trainer.config import TrainConfig
from trainer.distribution import strategies

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.


# How the step is compiled -> the trainer, and the group that holds the step's matmuls.
WAYS = {
    "no_xla": (OurTrainer, "false", "matmul"),
    "one_program": (OurTrainer, "true", "xla_whole_step"),
    "in_pieces": (InPieces, "true", "xla_forward_backward"),
}


@pytest.fixture(scope="module", params=list(WAYS))
def way(request):
    return request.param


@pytest.fixture(scope="module")
def trainer(way):
    kind, jit_compile, _ = WAYS[way]
    return kind(
        strategies.create_strategy("one_device"),
        dataclasses.replace(
            TrainConfig(), hidden_sizes=(16,), batch_size=1000, jit_compile=jit_compile
        ),
    )


@pytest.fixture(scope="module")
def profile(trainer, tmp_path_factory):
    return bench_profile.step_time_breakdown(trainer, str(tmp_path_factory.mktemp("trace")))


def test_group_shares_are_fractions_that_cover_all_the_time(profile):
    shares = {m: v for m, v in profile.items() if m.startswith("b1000_share_")}
    groups = [group for group, _ in bench_profile.GROUPS] + [bench_profile.OTHER]
    assert sorted(shares) == sorted(f"b1000_share_{group}" for group in groups)
    assert all(0.0 <= share <= 1.0 for share in shares.values())
    assert sum(shares.values()) == pytest.approx(1.0)


def test_matmuls_and_the_update_are_found_where_the_step_runs_them(way, profile):
    # Under XLA the matmuls run inside a compiled program, not as ops of their own.
    holder = WAYS[way][2]
    assert profile[f"b1000_share_{holder}"] > 0
    for group in {"matmul", "xla_whole_step", "xla_forward_backward"} - {holder}:
        assert profile[f"b1000_share_{group}"] == 0, group
    # Apart from the one program, the optimizer compiles each variable's update with XLA; the
    # converter's table alone leaves those kernels out, so a zero here means they were lost
    # again. Inside the one program the update is no kernel of its own.
    if holder == "xla_whole_step":
        assert profile["b1000_share_update"] == 0
    else:
        assert profile["b1000_share_update"] > 0
    assert profile["b1000_ms_per_step"] > 0


def test_top_ops_are_the_largest_op_types_in_decreasing_order(way, profile):
    top = [
        profile[f"b1000_top{rank}_op"].rsplit(" ", 1)
        for rank in range(1, bench_profile.TOP_OPS + 1)
    ]
    kinds = [kind for kind, _ in top]
    shares = [int(percent.removesuffix("%")) / 100 for _, percent in top]
    assert len(set(kinds)) == len(kinds)  # Each op type once.
    # As one program the step is one kernel, and the fifth type may round to 0%.
    assert shares == sorted(shares, reverse=True) and shares[0] > 0
    rounding = 0.005  # Each share is shown rounded to a whole percent.
    assert sum(shares) <= 1 + rounding * len(shares)
    # A step of this MLP is mostly matmuls: some are among the top types (or, under XLA, the
    # program that holds them), and those types hold no more than the group they belong to.
    group = WAYS[way][2]
    matches = {
        "matmul": lambda kind: "MatMul" in kind,
        "xla_whole_step": lambda kind: kind == f"XLA:{bench_profile.STEP_FUNCTION}",
        "xla_forward_backward": lambda kind: kind == "XLA:gradients",
    }[group]
    found = [share for kind, share in zip(kinds, shares) if matches(kind)]
    assert found, kinds
    assert sum(found) <= profile[f"b1000_share_{group}"] + rounding * len(found)


def test_a_kept_trace_is_reported_and_on_disk(profile):
    assert list(pathlib.Path(profile["b1000_trace_dir"]).glob("*.xplane.pb"))


@pytest.mark.parametrize("way", ["no_xla"], scope="module")  # Any way of compiling.
def test_by_default_the_trace_is_deleted_and_not_reported(trainer, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    profile = bench_profile.step_time_breakdown(trainer)
    assert "b1000_trace_dir" not in profile
    assert not list(tmp_path.iterdir())
