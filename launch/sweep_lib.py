"""A grid sweep: every combination of some trainer flags' values is one run of the real trainer.

Each run is `python -m trainer.train` in a subprocess, named after its values, so the same
grid names the same runs: rerunning a sweep skips the runs that finished (their result.json is
there) and lets the trainer resume the others from their checkpoints. The sweep also writes
what TensorBoard's HParams dashboard reads: the experiment (each swept flag with its values and
the metrics to compare) at the sweep directory, and each run's values in its run directory,
beside the trainer's own event files, which TensorBoard merges.
"""

import dataclasses
import datetime
import glob
import os
import shlex
import signal
import subprocess
import sys
import threading
from concurrent import futures

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from launch.sweep_plan import Sweep, SweepRun
from launch.trainer_args import LaunchError
from trainer.common import terminal
from trainer.common.exit_codes import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from trainer.common.paths import REPOSITORY
from trainer.common.tables import markdown_table
from trainer.common.terminal import tensorboard_command
from trainer.run import files

# Each run's trainer output, appended to on every attempt so a rerun never loses the last one.
LOG_FILE = "train.log"
# The HParams summaries live in event files of their own, told apart by these suffixes.
EXPERIMENT_SUFFIX = ".sweep_experiment"
SESSION_SUFFIX = ".sweep_session"
# {scalar tag the trainer logs: name in the HParams dashboard}.
METRICS = {
    "eval/accuracy": "validation accuracy",
    "eval/loss": "validation loss",
    "test/accuracy": "test accuracy",
    "test/loss": "test loss",
}
FINISHED, SKIPPED, FAILED, PREEMPTED, INTERRUPTED, NOT_STARTED = (
    "finished",
    "skipped (finished before)",
    "failed",
    "preempted",
    "interrupted",
    "not started",
)
# What the sweep's output says as it is first asked to stop, by signal.
_STOPPING = {
    signal.SIGTERM: "SIGTERM: stopping the running trainers at their next step",
    signal.SIGINT: "Ctrl-C (SIGINT): stopping the running trainers at their next step; "
    "Ctrl-C again stops them at once",
}


@dataclasses.dataclass(frozen=True)
class RunReport:
    run: SweepRun
    status: str
    test_accuracy: float | None = None
    message: str = ""  # The trainer's last line, when the run did not finish.
    # The trainer's; for a run not started, that of the signal that stopped the sweep.
    exit_code: int = 0


def write_hparams(sweep: Sweep) -> None:
    """Writes the HParams experiment at the sweep directory and each run's values in its own.

    The experiment is rewritten on every sweep so it lists the current grid: TensorBoard would
    show only one of several. A run's values follow from its name, so they are written once.
    """

    def write(directory, suffix, summary):
        writer = tf.summary.create_file_writer(directory, filename_suffix=suffix)
        with writer.as_default():
            summary()
        writer.close()

    os.makedirs(sweep.sweep_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(sweep.sweep_dir, f"*{EXPERIMENT_SUFFIX}")):
        os.remove(stale)
    write(
        sweep.sweep_dir,
        EXPERIMENT_SUFFIX,
        lambda: hp.hparams_config(
            hparams=[
                hp.HParam(flag, hp.Discrete([value.hparam for value in values]))
                for flag, values in sweep.grid.items()
            ],
            metrics=[hp.Metric(tag, display_name=name) for tag, name in METRICS.items()],
        ),
    )
    for run in sweep.runs:
        run_dir = sweep.run_dir(run)
        if not glob.glob(os.path.join(run_dir, f"*{SESSION_SUFFIX}")):
            os.makedirs(run_dir, exist_ok=True)
            write(
                run_dir,
                SESSION_SUFFIX,
                lambda: hp.hparams(
                    {flag: value.hparam for flag, value in run.values.items()}, trial_id=run.name
                ),
            )


class _Launcher:
    """Starts the runs' trainers; on SIGTERM or Ctrl-C it stops starting new ones and passes
    the signal on to those running, which checkpoint and exit 143 or 130, resumable by a rerun;
    a second Ctrl-C stops them at once.

    The trainers run in sessions of their own, so a terminal's Ctrl-C reaches them only this
    way, once each, and not also straight from the terminal, which would count as the second.
    """

    def __init__(self, sweep: Sweep, out):
        self.sweep, self.out = sweep, out
        self.stopping = threading.Event()
        self.stopped_by: int | None = None  # The first stop signal.
        self._lock = threading.Lock()  # Guards _running and the lines printed to `out`.
        self._running: set[subprocess.Popen] = set()
        # `-m trainer.train` must import from this repository whatever the working directory;
        # each trainer sets up its terminal from its own flags (terminal.user_environ).
        self._env = dict(
            terminal.user_environ(),
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])
            ),
        )

    def stop(self, signum, frame) -> None:
        with self._lock:
            if not self.stopping.is_set():
                self.stopped_by = signum
                print(f"{_STOPPING[signum]}; rerun the sweep to resume", file=self.out, flush=True)
            self.stopping.set()
            for process in self._running:
                process.send_signal(signum)

    def say(self, line: str) -> None:
        with self._lock:
            print(line, file=self.out, flush=True)

    def run(self, run: SweepRun) -> RunReport:
        run_dir = self.sweep.run_dir(run)
        result = files.read_result(run_dir)
        if result is not None:
            self.say(
                f"skipped  {run.name}: finished before, test accuracy {result['test_accuracy']:.4f}"
            )
            return RunReport(run, SKIPPED, result["test_accuracy"])
        command = self.sweep.command(run)
        with open(os.path.join(run_dir, LOG_FILE), "a") as log:
            log.write(
                f"\n# {datetime.datetime.now().isoformat(timespec='seconds')} "
                f"launch.sweep: {shlex.join(command)}\n"
            )
            log.flush()
            attempt_start = log.tell()
            with self._lock:  # A stop arriving now must not miss a trainer just started.
                if self.stopping.is_set():
                    return RunReport(run, NOT_STARTED, exit_code=128 + self.stopped_by)
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    start_new_session=True,
                )
                self._running.add(process)
                print(f"started  {run.name}", file=self.out, flush=True)
            exit_code = process.wait()
            with self._lock:
                self._running.discard(process)
        return self._report(run, exit_code, attempt_start)

    def _report(self, run: SweepRun, exit_code: int, attempt_start: int) -> RunReport:
        run_dir = self.sweep.run_dir(run)
        result = files.read_result(run_dir)
        if exit_code == 0 and result is not None:
            self.say(f"finished {run.name}: test accuracy {result['test_accuracy']:.4f}")
            return RunReport(run, FINISHED, result["test_accuracy"])
        with open(os.path.join(run_dir, LOG_FILE)) as log:
            log.seek(attempt_start)
            lines = [line.strip() for line in log if line.strip()]
        status = {PREEMPTED_EXIT_CODE: PREEMPTED, INTERRUPTED_EXIT_CODE: INTERRUPTED}.get(
            exit_code, f"{FAILED} (exit {exit_code})"
        )
        message = reason(lines)
        self.say(f"{status} {run.name}: {message} (log: {os.path.join(run_dir, LOG_FILE)})")
        return RunReport(run, status, message=message, exit_code=exit_code)


def reason(lines: list[str]) -> str:
    """Why a trainer stopped, from its output: its one-line error, or absl's flag error (which
    absl follows with a pointer to --helpfull), else its last line."""
    for line in reversed(lines):
        if line.startswith(("trainer.train: error: ", "FATAL Flags parsing error: ")):
            return line
    return lines[-1] if lines else "no output"


def run_sweep(sweep: Sweep, parallel: int = 1, out=sys.stdout) -> list[RunReport]:
    """Runs every run of the sweep, `parallel` at a time, and reports each in the grid's order.

    A run that fails does not stop the others. Called from the main thread, SIGTERM and Ctrl-C
    stop the sweep gracefully (see _Launcher).
    """
    if parallel < 1:
        raise LaunchError(f"--parallel={parallel}: must be at least 1")
    write_hparams(sweep)
    runs = sweep.runs
    print(
        f"launch.sweep: {len(runs)} run{'s' * (len(runs) != 1)} in {sweep.sweep_dir}, "
        f"{parallel} at a time; each run's output is in <run>/{LOG_FILE}",
        file=out,
        flush=True,
    )
    launcher = _Launcher(sweep, out)
    handled = (signal.SIGTERM, signal.SIGINT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, launcher.stop) for s in handled} if in_main_thread else {}
    try:
        with futures.ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(launcher.run, runs))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_code(reports: list[RunReport]) -> int:
    """130 if Ctrl-C stopped the sweep, as it does launch.local and the trainer; else 1 if any
    run failed; else 143 if SIGTERM stopped it (preempted: rerun to resume); else 0."""
    codes = {report.exit_code for report in reports}
    if INTERRUPTED_EXIT_CODE in codes:
        return INTERRUPTED_EXIT_CODE
    if any(report.status.startswith(FAILED) for report in reports):
        return 1
    return PREEMPTED_EXIT_CODE if PREEMPTED_EXIT_CODE in codes else 0


def format_table(sweep: Sweep, reports: list[RunReport]) -> str:
    """One row a run: its grid values, test accuracy and status; then where to look next."""
    rows = [
        [
            *(value.label for value in report.run.values.values()),
            "-" if report.test_accuracy is None else f"{report.test_accuracy:.4f}",
            f"{report.status}: {report.message}" if report.message else report.status,
        ]
        for report in reports
    ]
    table = markdown_table([*sweep.grid, "test accuracy", "status"], rows)
    logs = [
        f"log of {report.run.name}: {os.path.join(sweep.run_dir(report.run), LOG_FILE)}"
        for report in reports
        if report.message
    ]
    return "\n".join(
        [table, *logs, "TensorBoard (HParams tab): " + tensorboard_command(sweep.sweep_dir)]
    )
