"""The step fitted to the machine: --jit_compile=auto chosen from its description (and kept
from flags.txt on a resumption), and the one warning line where bfloat16 is slow."""

import dataclasses
import logging

import pytest

from tests.test_machine import SAPPHIRE_RAPIDS, ZEN2, ZEN4
from trainer.common import machine
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.step import machine_fit


def described(cpuinfo: str, onednn: bool | None, gpus: tuple[str, ...] = ()) -> machine.Machine:
    return machine.Machine(
        cpu=machine.parse_cpuinfo(cpuinfo),
        tensorflow="2.21.0",
        onednn=onednn,
        onednn_bfloat16=None,
        gpus=gpus,
        environment={},
    )


@pytest.mark.parametrize(
    "description, xla",
    [
        # TensorFlow turns oneDNN's custom operations on by itself on these two...
        (described(SAPPHIRE_RAPIDS, onednn=True), False),
        (described(ZEN4, onednn=True), False),
        # ... and off on an AVX2-only CPU, or anywhere with TF_ENABLE_ONEDNN_OPTS=0.
        (described(ZEN2, onednn=False), True),
        (described(SAPPHIRE_RAPIDS, onednn=False), True),
        (described(ZEN2, onednn=None), False),  # TensorFlow did not say: its default kept.
        (described(SAPPHIRE_RAPIDS, onednn=True, gpus=("NVIDIA H100",)), True),
        (described(ZEN2, onednn=False, gpus=("NVIDIA T4",)), True),
    ],
)
def test_jit_compile_auto_follows_the_machine(description, xla):
    chosen, why = machine_fit.choose_jit_compile(description)
    assert chosen is xla and why


def test_auto_on_this_machine_is_what_its_description_chooses():
    here = machine_fit.choose_jit_compile(machine.describe())[0]
    assert machine_fit.uses_xla("auto") is here
    assert machine_fit.uses_xla("true") is True and machine_fit.uses_xla("false") is False


@pytest.mark.parametrize(
    "precision, description, warned",
    [
        ("mixed_bfloat16", described(ZEN2, onednn=False), True),
        ("mixed_bfloat16", described(ZEN4, onednn=True), False),  # AVX512_BF16.
        ("mixed_bfloat16", described(SAPPHIRE_RAPIDS, onednn=True), False),  # AMX.
        ("mixed_bfloat16", described(ZEN2, onednn=False, gpus=("NVIDIA T4",)), False),
        ("mixed_bfloat16", described("", onednn=None), False),  # Flags unknown: no guess.
        ("float32", described(ZEN2, onednn=False), False),
        ("mixed_float16", described(ZEN2, onednn=False), False),
    ],
)
def test_one_warning_line_where_bfloat16_is_slow(caplog, precision, description, warned):
    with caplog.at_level(logging.WARNING):
        machine_fit.warn_if_bfloat16_is_slow(precision, description)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if warned:
        [line] = lines
        assert line.startswith("--precision=mixed_bfloat16: this CPU (AMD EPYC 7B12)")
        assert "neither AVX512_BF16 nor AMX" in line and "\n" not in line
    else:
        assert not lines


@pytest.fixture(scope="module")
def strategy():
    return strategies.create_strategy("one_device")


def test_a_new_run_records_what_auto_chose(tmp_path, strategy):
    config = TrainConfig(logdir=str(tmp_path))
    fitted = machine_fit.fit_to_machine(config, strategy)
    assert fitted.jit_compile == ("true" if machine_fit.uses_xla("auto") else "false")
    assert fitted.run_dir_name() == config.run_dir_name()  # Rounding only: the same run.
    explicit = dataclasses.replace(config, jit_compile="true")
    assert machine_fit.fit_to_machine(explicit, strategy) == explicit


@pytest.mark.parametrize("started", ["true", "false", "True", "False"])  # Older runs: True.
def test_a_resumed_run_keeps_the_choice_it_started_with(tmp_path, strategy, started):
    config = TrainConfig(logdir=str(tmp_path))
    run_dir = tmp_path / config.run_dir_name()
    run_dir.mkdir()
    (run_dir / "flags.txt").write_text(f"# git commit abc\n--epochs=10\n--jit_compile={started}\n")
    assert machine_fit.fit_to_machine(config, strategy).jit_compile == started.lower()


def test_bfloat16_that_would_abort_the_process_is_refused_in_one_line():
    capped = dataclasses.replace(
        described(SAPPHIRE_RAPIDS, onednn=True),
        onednn_bfloat16=True,  # TensorFlow's own CPUID check: AVX-512 here.
        environment={"ONEDNN_MAX_CPU_ISA": "avx2"},
    )
    with pytest.raises(machine_fit.MachineMismatch) as error:
        machine_fit.check_bfloat16_can_run("mixed_bfloat16", capped)
    assert str(error.value).startswith(
        "--precision=mixed_bfloat16: ONEDNN_MAX_CPU_ISA=AVX2 leaves oneDNN no bfloat16 kernel"
    )
    assert "\n" not in str(error.value)
    machine_fit.check_bfloat16_can_run("float32", capped)
    # With TF_ENABLE_ONEDNN_OPTS=0 as well, bfloat16 goes to Eigen: slow, but it runs.
    eigen = dataclasses.replace(capped, onednn=False, onednn_bfloat16=None)
    machine_fit.check_bfloat16_can_run("mixed_bfloat16", eigen)
    # Caps that keep bfloat16 kernels (oneDNN emulates bfloat16 from AVX512_CORE on).
    for cap in ("AVX512_CORE", "AVX512_CORE_BF16"):
        kept = dataclasses.replace(capped, environment={"ONEDNN_MAX_CPU_ISA": cap})
        machine_fit.check_bfloat16_can_run("mixed_bfloat16", kept)
