"""A grid sweep: every combination of some trainer flags' values is one run of the real trainer.

Each run is `python -m trainer.train` in a subprocess, named after its values, so the same
grid names the same runs: rerunning a sweep skips the runs that finished (their result.json is
there) and lets the trainer resume the others from their checkpoints. The sweep also writes
what TensorBoard's HParams dashboard reads: the experiment (each swept flag with its values and
the metrics to compare) at the sweep directory, and each run's values in its run directory,
beside the trainer's own event files, which TensorBoard merges.
"""

import glob
import os
import signal
import subprocess
import sys
import threading
from concurrent import futures

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from launch.sweep_plan import Sweep, SweepRun
from launch.sweep_report import (
    EXPERIMENT_SUFFIX,
    FAILED,
    FINISHED,
    INTERRUPTED,
    LOG_FILE,
    NOT_STARTED,
    PREEMPTED,
    SESSION_SUFFIX,
    SKIPPED,
    RunReport,
    attempt_header,
    reason,
)
from launch.trainer_args import LaunchError
from trainer.common import terminal
from trainer.common.exit_codes import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from trainer.common.paths import REPOSITORY
from trainer.run import files

# Made by the array task that writes the experiment, so that no other one writes it too.
EXPERIMENT_CLAIM = ".sweep_experiment_claimed"
# {scalar tag the trainer logs: name in the HParams dashboard}.
METRICS = {
    "eval/accuracy": "validation accuracy",
    "eval/loss": "validation loss",
    "test/accuracy": "test accuracy",
    "test/loss": "test loss",
}
# What the sweep's output says as it is first asked to stop, by signal.
_STOPPING = {
    signal.SIGTERM: "SIGTERM: stopping the running trainers at their next step",
    signal.SIGINT: "Ctrl-C (SIGINT): stopping the running trainers at their next step; "
    "Ctrl-C again stops them at once",
}


def write_hparams(sweep_dir: str, plan: dict, runs: list[dict] | None = None) -> None:
    """Writes the HParams experiment of `plan` (sweep_plan.Sweep.plan) at the sweep directory,
    and each run's values (of `runs`, else all the plan's) in its own run directory.

    The experiment is replaced by each local sweep (TensorBoard would show only one of
    several); of an array's tasks, only the first writes it. A run's values follow from its
    name, so they are written once.
    """

    def write(directory, suffix, summary):
        writer = tf.summary.create_file_writer(directory, filename_suffix=suffix)
        with writer.as_default():
            summary()
        writer.close()

    os.makedirs(sweep_dir, exist_ok=True)
    experiments = glob.glob(os.path.join(sweep_dir, f"*{EXPERIMENT_SUFFIX}"))
    if runs is None or (not experiments and _first_to_write(sweep_dir)):
        for stale in experiments:
            os.remove(stale)
        write(
            sweep_dir,
            EXPERIMENT_SUFFIX,
            lambda: hp.hparams_config(
                hparams=[_hparam(flag, domain) for flag, domain in plan["hparams"].items()],
                metrics=[hp.Metric(tag, display_name=name) for tag, name in METRICS.items()],
            ),
        )
    for run in plan["runs"] if runs is None else runs:
        run_dir = os.path.join(sweep_dir, run["name"])
        if not glob.glob(os.path.join(run_dir, f"*{SESSION_SUFFIX}")):
            os.makedirs(run_dir, exist_ok=True)
            write(
                run_dir,
                SESSION_SUFFIX,
                lambda: hp.hparams(run["hparams"], trial_id=run["name"]),
            )


def _hparam(flag: str, domain: dict) -> hp.HParam:
    if "values" in domain:
        return hp.HParam(flag, hp.Discrete(domain["values"]))
    return hp.HParam(flag, hp.RealInterval(float(domain["min"]), float(domain["max"])))


def _first_to_write(sweep_dir: str) -> bool:
    """Whether this array task is the first to claim writing the experiment (a sweep's plan
    never changes, so one experiment serves it)."""
    try:
        os.close(os.open(os.path.join(sweep_dir, EXPERIMENT_CLAIM), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


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
            log.write(attempt_header(command))
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


def run_sweep(sweep: Sweep, parallel: int = 1, out=sys.stdout) -> list[RunReport]:
    """Runs every run of the sweep, `parallel` at a time, and reports each in the grid's order.

    A run that fails does not stop the others. Called from the main thread, SIGTERM and Ctrl-C
    stop the sweep gracefully (see _Launcher).
    """
    if parallel < 1:
        raise LaunchError(f"--parallel={parallel}: must be at least 1")
    write_hparams(sweep.sweep_dir, sweep.plan())
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
