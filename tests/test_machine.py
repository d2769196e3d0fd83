"""The benchmark names its machine: /proc/cpuinfo texts read into the right instruction sets,
the line it prints, and the record in its JSON beside the date and the git commit."""

import dataclasses
import datetime
import json
import re

import pytest

from tests.toolkit import run_module
from trainer.common import machine

# What /proc/cpuinfo says on each kind of machine we run on, cut to the lines that matter
# (each processor's block; the real flags lines are longer still).
SAPPHIRE_RAPIDS = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8480+
physical id	: 0
core id		: 0
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512dq avx512cd \
avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8480+
physical id	: 0
core id		: 0
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512dq avx512cd \
avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8
"""

ZEN2 = "\n".join(
    f"""\
processor	: {n}
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 49
model name	: AMD EPYC 7B12
physical id	: 0
core id		: {n // 2}
flags		: fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni clzero
"""
    for n in range(4)
)

ZEN4 = "\n".join(
    f"""\
processor	: {n}
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
physical id	: 0
core id		: {n}
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512dq avx512ifma \
avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg
"""
    for n in range(2)
)

GRAVITON = """\
processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16
CPU implementer	: 0x41
"""


@pytest.mark.parametrize(
    "text, want",
    [
        (
            SAPPHIRE_RAPIDS,
            machine.Cpu(
                model="Intel(R) Xeon(R) Platinum 8480+",
                vendor="GenuineIntel",
                family="6",
                model_number="143",
                logical_cores=2,
                physical_cores=1,  # Two hyperthreads of one core.
                instruction_sets={"AVX2": True, "AVX-512": True, "AVX512_BF16": True, "AMX": True},
                amx=("amx_bf16", "amx_int8", "amx_tile"),
            ),
        ),
        (
            ZEN2,
            machine.Cpu(
                model="AMD EPYC 7B12",
                vendor="AuthenticAMD",
                family="23",
                model_number="49",
                logical_cores=4,
                physical_cores=2,
                instruction_sets={
                    "AVX2": True,
                    "AVX-512": False,
                    "AVX512_BF16": False,
                    "AMX": False,
                },
            ),
        ),
        (
            ZEN4,
            machine.Cpu(
                model="AMD EPYC",
                vendor="AuthenticAMD",
                family="25",
                model_number="17",
                logical_cores=2,
                physical_cores=2,
                instruction_sets={
                    "AVX2": True,
                    "AVX-512": True,
                    "AVX512_BF16": True,
                    "AMX": False,
                },
            ),
        ),
        (
            # ARM names its flags Features, and has none of these x86 sets (its bf16 is not
            # AVX512_BF16); no model name, no core ids.
            GRAVITON,
            machine.Cpu(
                logical_cores=1,
                instruction_sets={
                    "AVX2": False,
                    "AVX-512": False,
                    "AVX512_BF16": False,
                    "AMX": False,
                },
            ),
        ),
        ("", machine.Cpu()),
        ("garbage without a colon\n\n\n", machine.Cpu()),
    ],
    ids=["sapphire_rapids", "zen2", "zen4", "graviton", "empty", "garbage"],
)
def test_cpuinfo_is_read_into_the_cpu_and_its_instruction_sets(text, want):
    assert machine.parse_cpuinfo(text) == want


def test_without_proc_cpuinfo_the_cpu_is_unknown_but_its_cores_are_counted(tmp_path):
    cpu = machine.read_cpu(str(tmp_path / "no_cpuinfo"))
    assert cpu.instruction_sets is None
    assert cpu.logical_cores >= 1


def _machine(cpu: machine.Cpu, **settings) -> machine.Machine:
    defaults = dict(tensorflow="2.21.0", onednn=True, onednn_bfloat16=True, gpus=(), environment={})
    return machine.Machine(cpu=cpu, **{**defaults, **settings})


@pytest.mark.parametrize(
    "described, want",
    [
        (
            _machine(machine.parse_cpuinfo(ZEN4)),
            "AMD EPYC (AuthenticAMD family 25 model 17), 2 cores (2 physical), "
            "AVX2 AVX-512 AVX512_BF16, no AMX; "
            "TensorFlow 2.21.0, oneDNN on, bfloat16 through oneDNN; no GPU",
        ),
        (
            # TensorFlow's default on a CPU without AVX512_VNNI, AVX512_BF16 or AMX.
            _machine(machine.parse_cpuinfo(ZEN2), onednn=False, onednn_bfloat16=None),
            "AMD EPYC 7B12 (AuthenticAMD family 23 model 49), 4 cores (2 physical), "
            "AVX2, no AVX-512 no AVX512_BF16 no AMX; TensorFlow 2.21.0, oneDNN off; no GPU",
        ),
        (
            _machine(
                machine.parse_cpuinfo(ZEN4),
                onednn=False,
                onednn_bfloat16=None,
                environment={"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"},
            ),
            "AMD EPYC (AuthenticAMD family 25 model 17), 2 cores (2 physical), "
            "AVX2 AVX-512 AVX512_BF16, no AMX; TensorFlow 2.21.0, oneDNN off; no GPU; "
            "TF_ENABLE_ONEDNN_OPTS=0 ONEDNN_MAX_CPU_ISA=AVX2",
        ),
        (
            _machine(
                dataclasses.replace(machine.Cpu(), logical_cores=8),
                onednn=None,
                onednn_bfloat16=None,
                gpus=("NVIDIA A100-SXM4-40GB",),
            ),
            "unknown, 8 cores, instruction sets unknown; TensorFlow 2.21.0, oneDNN unknown; "
            "NVIDIA A100-SXM4-40GB",
        ),
    ],
    ids=["zen4", "zen2_default", "avx2_stand_in", "unknown_cpu_with_gpu"],
)
def test_the_machine_line_names_what_decides_the_kernels(described, want):
    assert described.line() == want


def test_this_machine_is_described_from_tensorflow_itself():
    described = machine.describe()
    assert described.tensorflow == __import__("tensorflow").__version__
    # This TensorFlow says whether its oneDNN operations are on: a bool, not unknown.
    assert isinstance(described.onednn, bool)
    json.dumps(described.record())  # The record is plain JSON.


@pytest.mark.slow
def test_the_bench_prints_its_machine_first_and_records_it_in_its_json(tmp_path):
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    # The quickest section (seconds): the JSON's shape is what is checked, not its figures.
    done = run_module(
        "trainer.bench", "--sections=precision_allreduce", f"--json={tmp_path / 'bench.json'}"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    described = machine.describe()
    assert done.stdout.splitlines()[0] == f"machine: {described.line()}"
    record = json.loads((tmp_path / "bench.json").read_text())
    assert sorted(record) == ["date", "git_commit", "machine", "measurements"]
    assert record["machine"] == json.loads(json.dumps(described.record()))
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?|unknown", record["git_commit"])
    assert before <= datetime.datetime.fromisoformat(record["date"])
    assert set(record["measurements"]) == {"precision_allreduce"}
    assert all(ms > 0 for ms in record["measurements"]["precision_allreduce"].values())
