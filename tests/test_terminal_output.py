"""What a user's terminal shows: the real entry points' own lines, not the libraries' chatter
unless --verbosity asks for it; errors still one line; the benchmark's progress."""

import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.toolkit import REPOSITORY, environment, finish, start_module
from trainer.bench import training as bench_training
from trainer.common import terminal

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

TINY_RUN = [
    "--hidden_sizes=16",
    "--batch_size=1000",
    "--epochs=1",
    "--warmup_epochs=0",
    "--data_source=bundled",
]
# What TensorFlow's libraries print on a plain run when nothing keeps them quiet.
CHATTER = [
    "oneDNN custom operations",  # TensorFlow's line; ours may name oneDNN too.
    "cpu_feature_guard",
    "cudart_stub",
    "cuda_platform",
    "absl::InitializeLog",
    "Sharding callback",
    "signature_serialization",
    "Assets written",
    "XLA service",
    "local_rendezvous",
]
# A C++ log line, or a Python one through absl: severity, date, time, thread, file:line].
LOG_LINE = re.compile(r"[IWEF]\d{4} [\d:.]+ +\d+ ([^:\]]+):\d+\] ")
OUR_FILES = {
    path.name
    for package in ("data", "launch", "models", "trainer")
    for path in (REPOSITORY / package).rglob("*.py")
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{case: (exit code, stdout, stderr)} of the real entry points, run side by side (each is
    mostly TensorFlow's import time), with TF_CPP_MIN_LOG_LEVEL unset as in a user's shell."""
    logdir = tmp_path_factory.mktemp("terminal")
    commands = {
        "train": ["trainer.train", *TINY_RUN, f"--logdir={logdir}", "--run_name=quiet"],
        "train -v 1": [
            "trainer.train",
            *TINY_RUN,
            f"--logdir={logdir}",
            "--run_name=verbose",
            "-v",
            "1",
        ],
        "bad flag": ["trainer.train", "--batch_size=0", f"--logdir={logdir}"],
        "convergence": ["trainer.convergence", "--max_iters=5", f"--logdir={logdir}/suite"],
    }
    # Tests quiet TensorFlow for their processes; here the entry points must do it alone.
    env = {k: v for k, v in environment().items() if k != terminal.CPP_LEVEL}
    started = {case: start_module(*command, env=env) for case, command in commands.items()}
    done = {case: finish(process) for case, process in started.items()}
    return {case: (d.returncode, d.stdout, d.stderr) for case, d in done.items()}


def _library_lines(text: str) -> list[str]:
    """Log lines from files that are not ours (C++ sources, installed packages)."""
    return [
        line
        for line in text.splitlines()
        if (match := LOG_LINE.match(line)) and match.group(1) not in OUR_FILES
    ]


def test_training_shows_our_lines_and_none_of_the_libraries(outputs):
    code, stdout, stderr = outputs["train"]
    assert code == 0, stderr[-3000:]
    for ours in (
        "replica(s)",
        "run directory:",
        "saved ",
        "ckpt-50",
        "weights fingerprint",
        "exported SavedModel",
    ):
        assert ours in stderr
    assert "epoch 1/1  step 50/50" in stdout
    assert stdout.splitlines()[-1].startswith("test accuracy: ")
    assert [marker for marker in CHATTER if marker in stdout + stderr] == []
    assert _library_lines(stderr) == []


def test_verbosity_1_brings_the_libraries_lines_back(outputs):
    code, stdout, stderr = outputs["train -v 1"]
    assert code == 0, stderr[-3000:]
    assert "absl::InitializeLog" in stderr  # C++, as TensorFlow loads.
    assert "Sharding callback" in stderr  # TensorFlow's Python, at each checkpoint.
    assert "run directory:" in stderr and "test accuracy: " in stdout


def test_an_error_is_still_its_one_line(outputs):
    code, stdout, stderr = outputs["bad flag"]
    assert code == 1
    assert stderr.splitlines() == ["trainer.train: error: --batch_size=0: must be at least 1"]


def test_the_convergence_suite_prints_its_table_alone(outputs):
    code, stdout, stderr = outputs["convergence"]
    assert code == 0, stderr[-3000:]
    assert stdout.startswith("| optimizer ")
    assert stderr == ""
    # The hint names this Python's own tensorboard: .venv/bin/tensorboard from a checkout.
    program, logdir = re.fullmatch(
        r"TensorBoard: (\S+) --logdir (\S+)", stdout.splitlines()[-1]
    ).groups()
    assert logdir.endswith("/suite") and os.path.samefile(
        os.path.join(REPOSITORY, program),
        os.path.join(os.path.dirname(sys.executable), "tensorboard"),
    )


@pytest.mark.parametrize(
    "argv, verbosity",
    [
        ([], 0),
        (["--verbosity=1"], 1),
        (["-v", "2"], 2),
        (["-v=1", "--epochs=2"], 1),
        (["--verbosity", "-1"], -1),
        (["--v=1", "--verbosity=0"], 0),  # The last one counts, as in absl.
        (["--verbosity=x"], 0),  # absl refuses it later, with its own message.
        (["--workers=2", "--", "--verbosity=1"], 0),  # A worker's flag, after --.
    ],
)
def test_verbosity_is_read_from_the_command_line_before_absl_parses_it(argv, verbosity):
    assert terminal.verbosity_from(["prog", *argv]) == verbosity


STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1795516774.653724   24051 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1795516774.689213   24051 cpu_feature_guard.cc:227] This TensorFlow binary is...
To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.
W0000 00:00:1795516774.700000   24051 some_op.cc:12] a warning
2025-09-17 14:44:05.176998: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] err
F0000 00:00:1795516774.800000   24051 cpu_feature_guard.cc:100] The TensorFlow library was...
"""


@pytest.mark.parametrize(
    "min_level, kept",
    [
        (0, [0, 1, 2, 3, 4, 5, 6]),
        (1, [4, 5, 6]),  # The INFO record goes with its continuation line.
        (2, [5, 6]),
        (3, [6]),
    ],
)
def test_start_up_lines_are_held_back_below_the_cpp_log_level(min_level, kept):
    lines = STARTUP.splitlines(keepends=True)
    assert terminal.cpp_lines_to_show(STARTUP, min_level) == "".join(lines[i] for i in kept)


class _Workload:
    work = 10

    def run(self):
        return 1.0


def test_the_benchmark_logs_each_round_of_a_measurement(caplog):
    caplog.set_level(logging.INFO, logger="absl")
    bench_training.measure(
        {"a": _Workload(), "b": _Workload()}, rounds=3, label="[throughput] batch 128"
    )
    assert [r.getMessage() for r in caplog.records] == [
        "[throughput] batch 128: warm-up, one untimed run of each of 2 workloads",
        "[throughput] batch 128: round 1/3",
        "[throughput] batch 128: round 2/3, about 0:00 left",
        "[throughput] batch 128: round 3/3, about 0:00 left",
    ]


def _assert_ended_by_ctrl_c(module: str, process) -> None:
    done = finish(process, timeout=120)
    assert done.returncode == 128 + signal.SIGINT, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == f"{module}: interrupted (Ctrl-C)", done.stderr[-3000:]
    assert "Traceback" not in done.stderr


def test_a_ctrl_c_nothing_caught_is_one_line_not_a_traceback():
    # As while an entry point loads TensorFlow, before it has anything to stop.
    done = subprocess.run(
        [sys.executable, "-c", "import trainer.common.terminal\nraise KeyboardInterrupt"],
        cwd=REPOSITORY,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGINT  # As a shell expects of a program it interrupted.
    assert done.stderr.splitlines() == ["-c: interrupted (Ctrl-C)"], done.stderr


def test_ctrl_c_ends_the_convergence_suite_at_once_in_one_line(tmp_path):
    # Inside the suite's one compiled loop (hours long at this max_iters), where Python's own
    # handler would wait for it to end.
    process = start_module("trainer.convergence", "--max_iters=1000000000", f"--logdir={tmp_path}")
    deadline = time.monotonic() + 120
    while not (tmp_path / "settings.json").exists():  # Written as the suite begins.
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _assert_ended_by_ctrl_c("trainer.convergence", process)


def test_ctrl_c_ends_the_benchmark_at_once_in_one_line():
    process = start_module("trainer.bench", "--sections=throughput")
    for line in process.stderr:
        if "[throughput] section 1/1" in line:  # Its minutes of measurement begin.
            process.send_signal(signal.SIGINT)
            break
    _assert_ended_by_ctrl_c("trainer.bench", process)
