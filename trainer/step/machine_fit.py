"""How the step fits the machine it runs on: whether XLA compiles the step (`--jit_compile=auto`:
on one replica the whole step as one program, on several the forward and backward pass), and
whether bfloat16 pays.

The rule for XLA follows what `make bench` measured (docs/performance.md, "XLA or not"):

- with TensorFlow's oneDNN custom operations on, a CPU runs the MLP's layers as oneDNN's fused
  matmul, bias and ReLU kernels, and XLA's own code for the same pass is slower. TensorFlow
  turns them on by itself only on a CPU with AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX;
- without them (an AVX2-only CPU, or TF_ENABLE_ONEDNN_OPTS=0), op-by-op kernels are Eigen's
  and XLA's fused pass is faster;
- on a GPU, XLA: it fuses the many small kernels of a step that lasts microseconds, which is
  why Keras's own jit_compile="auto" turns it on there. We cannot measure a GPU here; the rule
  is the same code on every machine and is tested on each kind of description.

The choice only changes float rounding, never what a run computes (tests/test_mixed_precision.py
compares the two), so it does not name the run; the trainer records it in flags.txt all the
same, so that a resumed run rounds as it started.
"""

import dataclasses

import tensorflow as tf
from absl import logging

from trainer.common import machine as machine_description
from trainer.common.errors import OneLineError
from trainer.config import TrainConfig, flagfile_values
from trainer.distribution import workers
from trainer.run import files

# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) under which a bfloat16 matmul kills the process (exit
# 139 on an AVX-512 CPU with TensorFlow 2.21); AVX512_CORE and up emulate bfloat16 and run.
ISA_CAPS_WITHOUT_BFLOAT16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI")


class MachineMismatch(OneLineError):
    """Settings this machine, as configured, cannot run."""


def choose_jit_compile(machine: machine_description.Machine) -> tuple[bool, str]:
    """(whether XLA compiles the step, why), for `machine`."""
    if machine.gpus:
        return True, f"a GPU ({machine.gpus[0]}): XLA fuses the step's many small kernels"
    if machine.onednn:
        return False, "oneDNN's fused CPU kernels are on, and faster than XLA's pass"
    if machine.onednn is None:
        return False, "TensorFlow does not say whether oneDNN is on; TensorFlow's default kept"
    return True, "oneDNN's fused CPU kernels are off on this CPU, and XLA's pass is faster"


def uses_xla(jit_compile: str) -> bool:
    """`--jit_compile` as the step takes it: "auto" is decided from this machine."""
    if jit_compile == "auto":
        return choose_jit_compile(machine_description.describe())[0]
    return jit_compile == "true"


def warn_if_bfloat16_is_slow(precision: str, machine: machine_description.Machine) -> None:
    """One warning line when mixed_bfloat16 runs on a CPU that cannot compute in bfloat16."""
    if precision != "mixed_bfloat16" or machine.gpus or machine.cpu.native_bfloat16 is not False:
        return
    logging.warning(
        "--precision=mixed_bfloat16: this CPU (%s) has neither AVX512_BF16 nor AMX, so bfloat16 "
        "is widened to float32 and back in every op: slower than --precision=float32 here "
        "(docs/performance.md)",
        machine.cpu.model,
    )


def check_bfloat16_can_run(precision: str, machine: machine_description.Machine) -> None:
    """Raises MachineMismatch where mixed_bfloat16 would abort the process at its first step:
    TensorFlow hands bfloat16 ops to oneDNN by its own CPUID check, and ONEDNN_MAX_CPU_ISA
    caps oneDNN below any bfloat16 kernel."""
    cap = machine.environment.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if (
        precision == "mixed_bfloat16"
        and machine.onednn_bfloat16
        and cap in ISA_CAPS_WITHOUT_BFLOAT16
    ):
        raise MachineMismatch(
            f"--precision=mixed_bfloat16: ONEDNN_MAX_CPU_ISA={cap} leaves oneDNN no bfloat16 "
            "kernel, yet TensorFlow hands it bfloat16 ops on this CPU, so the first step would "
            "abort the process; unset it, set TF_ENABLE_ONEDNN_OPTS=0 as well, or train in "
            "--precision=float32"
        )


def fit_to_machine(config: TrainConfig, strategy: tf.distribute.Strategy) -> TrainConfig:
    """The config with --jit_compile=auto decided: as the run started, on a resumption, else
    from this machine; the chief's choice on every worker (a collective). Refuses
    mixed_bfloat16 where it would abort, and warns where it is slow."""
    machine = machine_description.describe()
    check_bfloat16_can_run(config.precision, machine)
    warn_if_bfloat16_is_slow(config.precision, machine)
    if config.jit_compile != "auto":
        return config
    run_dir = config.run_dir()
    started = flagfile_values(files.read_flags(run_dir) or "").get("jit_compile", "").lower()
    if started in ("true", "false"):
        xla, why = started == "true", f"the run in {run_dir} started with it"
    else:
        xla, why = choose_jit_compile(machine)
    if workers.chief_value(strategy, int(xla)) != xla:
        xla, why = not xla, "the chief's choice, for the whole job"
    logging.info(
        "--jit_compile=auto: %s (%s)",
        "XLA compiles the step" if xla else "no XLA for forward and backward",
        why,
    )
    return dataclasses.replace(config, jit_compile="true" if xla else "false")
