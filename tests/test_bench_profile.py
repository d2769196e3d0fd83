"""The step profile on a tiny trainer: a real trace, read back by xprof's converter.

Each way of compiling the step is profiled on every machine (`--jit_compile` forced both
ways), whatever `--jit_compile=auto` would choose here."""

import dataclasses
import pathlib
import tempfile

import pytest

from trainer.bench import step_profile as bench_profile
from trainer.bench.training import OurTrainer
from trainer.config import TrainConfig
from trainer.distribution import strategies

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.


@pytest.fixture(scope="module", params=["false", "true"], ids=["no_xla", "xla"])
def trainer(request):
    return OurTrainer(
        strategies.create_strategy("one_device"),
        dataclasses.replace(
            TrainConfig(), hidden_sizes=(16,), batch_size=1000, jit_compile=request.param
        ),
    )


def xla_forward_backward(trainer) -> bool:
    return trainer.config.jit_compile == "true"


@pytest.fixture(scope="module")
def profile(trainer, tmp_path_factory):
    return bench_profile.step_time_breakdown(trainer, str(tmp_path_factory.mktemp("trace")))


def test_group_shares_are_fractions_that_cover_all_the_time(profile):
    shares = {m: v for m, v in profile.items() if m.startswith("b1000_share_")}
    groups = [group for group, _ in bench_profile.GROUPS] + [bench_profile.OTHER]
    assert sorted(shares) == sorted(f"b1000_share_{group}" for group in groups)
    assert all(0.0 <= share <= 1.0 for share in shares.values())
    assert sum(shares.values()) == pytest.approx(1.0)


def test_matmuls_and_the_xla_compiled_update_are_found(trainer, profile):
    # Under XLA the matmuls run inside the forward and backward program, not as ops of their own.
    if xla_forward_backward(trainer):
        assert profile["b1000_share_xla_forward_backward"] > 0
    else:
        assert profile["b1000_share_matmul"] > 0
        assert profile["b1000_share_xla_forward_backward"] == 0
    # The optimizer compiles each variable's update with XLA; the converter's table alone
    # leaves those kernels out, so a zero here means they were lost again.
    assert profile["b1000_share_update"] > 0
    assert profile["b1000_ms_per_step"] > 0


def test_top_ops_are_the_largest_op_types_in_decreasing_order(trainer, profile):
    top = [
        profile[f"b1000_top{rank}_op"].rsplit(" ", 1)
        for rank in range(1, bench_profile.TOP_OPS + 1)
    ]
    kinds = [kind for kind, _ in top]
    shares = [int(percent.removesuffix("%")) / 100 for _, percent in top]
    assert len(set(kinds)) == len(kinds)  # Each op type once.
    assert shares == sorted(shares, reverse=True) and shares[-1] > 0
    rounding = 0.005  # Each share is shown rounded to a whole percent.
    assert sum(shares) <= 1 + rounding * len(shares)
    # A step of this MLP is mostly matmuls: some are among the top types (or, under XLA, the
    # program that holds them), and those types hold no more than the group they belong to.
    group, matches = (
        ("xla_forward_backward", lambda kind: kind == "XLA:gradients")
        if xla_forward_backward(trainer)
        else ("matmul", lambda kind: "MatMul" in kind)
    )
    found = [share for kind, share in zip(kinds, shares) if matches(kind)]
    assert found, kinds
    assert sum(found) <= profile[f"b1000_share_{group}"] + rounding * len(found)


def test_a_kept_trace_is_reported_and_on_disk(profile):
    assert list(pathlib.Path(profile["b1000_trace_dir"]).glob("*.xplane.pb"))


@pytest.mark.parametrize("trainer", ["false"], indirect=True)  # Either way of compiling.
def test_by_default_the_trace_is_deleted_and_not_reported(trainer, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    profile = bench_profile.step_time_breakdown(trainer)
    assert "b1000_trace_dir" not in profile
    assert not list(tmp_path.iterdir())
