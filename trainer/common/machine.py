"""The machine a program runs on: one line for the terminal, one record for a benchmark's JSON,
and what the trainer reads to fit its step to it (trainer/step/machine_fit.py).

    AMD EPYC (AuthenticAMD family 25 model 17), 2 cores (2 physical), AVX2 AVX-512
    AVX512_BF16, no AMX; TensorFlow 2.21.0, oneDNN on, bfloat16 through oneDNN; no GPU

A figure means little without it: on our machine a bfloat16 step runs about three times as fast
with its native bfloat16 (AVX512_BF16) as when it dispatches like a CPU without
(docs/performance.md), and TensorFlow picks its kernels from what it finds. Two of its choices
are read from TensorFlow itself, not guessed:

- oneDNN's custom operations (`_pywrap_util_port.IsMklEnabled`). Without
  TF_ENABLE_ONEDNN_OPTS, TensorFlow turns them on only on a CPU with AVX512_VNNI, AVX512_BF16,
  AVX_VNNI or AMX; on an AVX2-only CPU they are off, and float32 matmuls still reach oneDNN's
  gemm through Eigen.
- bfloat16 through oneDNN (`_pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU`): TensorFlow
  hands bfloat16 ops to oneDNN only on a CPU with AVX-512 (its own CPUID check, which
  ONEDNN_MAX_CPU_ISA does not change); elsewhere they fall back to Eigen, which widens
  bfloat16 to float32 and back.

The environment variables that move those choices (TF_ENABLE_ONEDNN_OPTS, ONEDNN_MAX_CPU_ISA,
XLA_FLAGS) are recorded when set. The CPU comes from /proc/cpuinfo on Linux; elsewhere what
it cannot tell is "unknown", never an error.
"""

import dataclasses
import os
import platform

CPUINFO = "/proc/cpuinfo"

# The instruction sets that decide which kernels a step gets: name -> its /proc/cpuinfo flag.
INSTRUCTION_SETS = {
    "AVX2": "avx2",
    "AVX-512": "avx512f",
    "AVX512_BF16": "avx512_bf16",
    "AMX": "amx_tile",  # Intel's tile registers; amx_bf16 and amx_int8 are what use them.
}
# Set by a user or a benchmark's stand-in, they change which kernels TensorFlow runs.
DISPATCH_VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "XLA_FLAGS")
UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class Cpu:
    model: str = UNKNOWN
    vendor: str = UNKNOWN
    family: str = UNKNOWN  # As /proc/cpuinfo numbers them: "25" and "17" for a Zen 4 EPYC.
    model_number: str = UNKNOWN
    logical_cores: int | None = None
    physical_cores: int | None = None
    # {name in INSTRUCTION_SETS: present}; None when the flags could not be read.
    instruction_sets: dict[str, bool] | None = None
    amx: tuple[str, ...] = ()  # Every amx_* flag, for the AMX parts a CPU has.

    @property
    def native_bfloat16(self) -> bool | None:
        """Whether the CPU computes in bfloat16 itself (AVX512_BF16 or AMX); None: unknown."""
        if self.instruction_sets is None:
            return None
        return self.instruction_sets["AVX512_BF16"] or self.instruction_sets["AMX"]


def parse_cpuinfo(text: str) -> Cpu:
    """The CPU described by the text of /proc/cpuinfo (every processor's block; the first
    one's model and flags stand for all, as on any machine we run)."""
    blocks = [_fields(block) for block in text.split("\n\n") if block.strip()]
    processors = [block for block in blocks if "processor" in block]
    if not processors:
        return Cpu()
    first = processors[0]
    cores = {(b["physical id"], b["core id"]) for b in processors if "core id" in b}
    flags = first.get("flags", first.get("Features"))  # x86, then ARM's name for them.
    return Cpu(
        model=first.get("model name", UNKNOWN),
        vendor=first.get("vendor_id", UNKNOWN),
        family=first.get("cpu family", UNKNOWN),
        model_number=first.get("model", UNKNOWN),
        logical_cores=len(processors),
        physical_cores=len(cores) or None,
        instruction_sets=None
        if flags is None
        else {name: flag in flags.split() for name, flag in INSTRUCTION_SETS.items()},
        amx=tuple(sorted(flag for flag in (flags or "").split() if flag.startswith("amx"))),
    )


def _fields(block: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def read_cpu(path: str = CPUINFO) -> Cpu:
    """This machine's CPU: from /proc/cpuinfo where there is one, else what Python knows."""
    try:
        with open(path) as f:
            cpu = parse_cpuinfo(f.read())
    except OSError:
        cpu = Cpu()
    if cpu.logical_cores is None:
        cpu = dataclasses.replace(
            cpu, model=platform.processor() or UNKNOWN, logical_cores=os.cpu_count()
        )
    return cpu


@dataclasses.dataclass(frozen=True)
class Machine:
    cpu: Cpu
    tensorflow: str
    onednn: bool | None  # TensorFlow's oneDNN custom operations; None: TensorFlow did not say.
    onednn_bfloat16: bool | None  # Whether bfloat16 ops go to oneDNN, when it is on.
    gpus: tuple[str, ...]
    environment: dict[str, str]  # The DISPATCH_VARIABLES that are set.

    def line(self) -> str:
        cpu = self.cpu
        cores = f"{cpu.logical_cores or UNKNOWN} cores"
        if cpu.physical_cores:
            cores += f" ({cpu.physical_cores} physical)"
        name = cpu.model
        if cpu.family != UNKNOWN:  # Model names can be vague ("AMD EPYC" under KVM).
            name += f" ({cpu.vendor} family {cpu.family} model {cpu.model_number})"
        parts = [name, cores, _instruction_sets(cpu.instruction_sets)]
        software = [f"TensorFlow {self.tensorflow}", _onednn(self.onednn, self.onednn_bfloat16)]
        gpus = ", ".join(self.gpus) if self.gpus else "no GPU"
        settings = " ".join(f"{name}={value}" for name, value in self.environment.items())
        return "; ".join(filter(None, [", ".join(parts), ", ".join(software), gpus, settings]))

    def record(self) -> dict:
        return dataclasses.asdict(self)


def _instruction_sets(present: dict[str, bool] | None) -> str:
    if present is None:
        return "instruction sets unknown"
    has = [name for name, found in present.items() if found]
    lacks = [name for name, found in present.items() if not found]
    return ", ".join(filter(None, [" ".join(has), " ".join(f"no {name}" for name in lacks)]))


def _onednn(on: bool | None, bfloat16: bool | None) -> str:
    if on is None:
        return "oneDNN unknown"
    if not on:
        return "oneDNN off"
    if bfloat16 is None:
        return "oneDNN on"
    return "oneDNN on, bfloat16 " + ("through oneDNN" if bfloat16 else "through Eigen")


def describe() -> Machine:
    """This machine and the TensorFlow this process runs."""
    import tensorflow as tf  # Here: the CPU half above needs none of it.

    try:
        from tensorflow.python.util import _pywrap_util_port, _pywrap_utils

        onednn = bool(_pywrap_util_port.IsMklEnabled())
        bfloat16 = bool(
            _pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU(tf.bfloat16.as_datatype_enum)
        )
    except (ImportError, AttributeError):  # Private modules: another TensorFlow may lack them.
        onednn = bfloat16 = None
    return Machine(
        cpu=read_cpu(),
        tensorflow=tf.__version__,
        onednn=onednn,
        onednn_bfloat16=bfloat16 if onednn else None,
        gpus=tuple(
            tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")
        ),
        environment={name: os.environ[name] for name in DISPATCH_VARIABLES if name in os.environ},
    )
