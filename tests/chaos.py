"""A chaos soak: runs killed again and again end with the weights of a run never killed.

    python -m tests.chaos                          # make chaos: 10 kills of each job, seed 0
    python -m tests.chaos --kills=20 --seed=3 --jobs=replicas

Each job is run once uninterrupted, then again in another run directory where it is killed
--kills times at random moments (SIGKILL or SIGTERM, a seeded random choice) and rerun after
each kill with the same command, until a rerun finishes. Every job is --deterministic, so the
final checkpoints must hold bitwise the same weights, optimizer slots and step counter.

  replicas  python -m trainer.train --cpu_replicas=2 (MirroredStrategy on 2 CPU devices);
            SIGKILL kills the trainer.
  workers   python -m launch.local --workers=2 (2 processes, MultiWorkerMirroredStrategy);
            SIGKILL kills the launcher and both workers at once (a lost node), SIGTERM goes to
            the launcher, which passes it on.
  healing   python -m launch.local --workers=2 --max_restarts=<kills>, run once: the signal
            goes to one of the workers, chosen at random, and the launcher restarts the job
            itself, --kills times; the moment is counted from each attempt's chief's line.

Prints a table of the kills and the verdict per job; exits 1 if any job ended with other
weights, did not finish, or went on to finish after a signal (a lost SIGTERM). Not part of
`make test`: it takes minutes.
"""

import contextlib
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time

# Before the imports that load TensorFlow: it sets up what the terminal shows of it.
import trainer.common.terminal  # noqa: F401

# isort: split

import psutil
from absl import app, flags

from launch.local_job import exit_code
from tests.job_processes import Output, running, workers_of
from tests.toolkit import (
    WEIGHTS_AND_OPTIMIZER,
    assert_same_tensors,
    checkpoint_path,
    checkpoint_tensors,
    command_line,
    start_module,
)
from trainer.common.tables import markdown_table
from trainer.config import TrainConfig

JOBS = ("replicas", "workers", "healing")
flags.DEFINE_integer("kills", 10, "Kills of each job before it is let finish.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seeds the moments and the signals.")
flags.DEFINE_list("jobs", list(JOBS), f"Jobs to soak: {', '.join(JOBS)}.")
flags.DEFINE_string("logdir", "", "Where the runs go; empty: a temporary directory.")
flags.DEFINE_float(
    "max_moment",
    4.0,
    "A kill comes 0 to this many seconds after the run's "
    "first `run directory:` line (the process has loaded TensorFlow and its data).",
)
FLAGS = flags.FLAGS

# 12 epochs of 100 steps of a small model, a checkpoint every 50 steps: long enough for kills to
# land mid-run, short enough for minutes in all.
CONFIG = TrainConfig(
    hidden_sizes=(64,),
    batch_size=500,
    epochs=12,
    learning_rate=3e-3,
    warmup_epochs=0.0,
    steps_per_loop=10,
    checkpoint_every_steps=50,
    data_source="bundled",
    deterministic=True,
)
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}


@dataclasses.dataclass
class Attempt:
    signal: str  # "" when none was sent.
    moment: float | None  # When it was sent: seconds after the `run directory:` line.
    resumed_from: int | None
    exit_code: int


def start(job: str, logdir: str, run_name: str, kills: int = 0) -> subprocess.Popen:
    """The job's processes in a session of their own (one signal reaches them all), output
    merged into one pipe; a healing job may restart itself `kills` times."""
    config = dataclasses.replace(CONFIG, logdir=logdir, run_name=run_name)
    if job == "replicas":
        args = ("trainer.train", "--strategy=mirrored", "--cpu_replicas=2", *command_line(config))
    else:
        restarts = (f"--max_restarts={kills}",) if job == "healing" else ()
        args = ("launch.local", "--workers=2", *restarts, "--", *command_line(config))
    return start_module(*args, stderr=subprocess.STDOUT, start_new_session=True)


# A run's start, after it has loaded TensorFlow and its data: the trainer's (a job's chief's).
RUN_STARTED = r"(\[worker 0\] )?[^[].*run directory:"


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL to every process group of the session `process` leads, the job's (launch.local
    runs it in a group of its own) before the launcher's: all at once, as a lost node."""
    groups = {
        os.getpgid(child.pid)
        for child in running(psutil.Process(process.pid).children(recursive=True))
    }
    for group in sorted(groups - {process.pid}) + [process.pid]:
        with contextlib.suppress(ProcessLookupError):  # Ended meanwhile.
            os.killpg(group, signal.SIGKILL)


def resumed_from(output: str) -> int | None:
    resumed = re.search(r"resumed from \S+ at step (\d+)", output)
    return resumed and int(resumed.group(1))


def run_once(
    job: str, logdir: str, run_name: str, kill: tuple[str, float] | None
) -> tuple[Attempt, str]:
    """One run of the job; with `kill` (signal name, seconds), that signal that long after the
    run's `run directory:` line, unless the run ended first."""
    process = start(job, logdir, run_name)
    output = Output(process)
    sent = ""
    if kill:
        name, moment = kill
        if output.wait_for(RUN_STARTED, timeout=300) and process.poll() is None:
            time.sleep(moment)
            if process.poll() is None:
                sent = name
                if name == "SIGKILL":
                    kill_session(process)
                else:
                    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=600)
    text = output.text()
    return Attempt(sent, kill[1] if sent else None, resumed_from(text), exit_code(returncode)), text


def heal(logdir: str, kills: int, rng: random.Random) -> tuple[list[Attempt], str]:
    """One healing job: after each attempt's start, a random worker gets a random signal at a
    random moment, `kills` times, and the launcher restarts the job; the attempts (the exit
    code of the worker that ended each, the launcher's for the last) and the job's output."""
    process = start("healing", logdir, "healing_chaos", kills)
    output = Output(process)
    sent = []
    for attempt in range(1, kills + 1):
        name, moment = rng.choice(sorted(SIGNALS)), rng.uniform(0, FLAGS.max_moment)
        if not output.wait_for(RUN_STARTED, count=attempt, timeout=300):
            break  # The job ended.
        time.sleep(moment)
        try:
            rng.choice(list(workers_of(process).values())).send_signal(SIGNALS[name])
        except (IndexError, psutil.NoSuchProcess):  # All exited meanwhile.
            break
        sent.append((name, moment))
        print(f"[healing] kill {attempt}: {name} {moment:.2f} s", file=sys.stderr, flush=True)
    returncode = process.wait(timeout=900)
    text = output.text()
    # An attempt's output ends with the launcher's line on the worker that ended it.
    segments = re.split(
        r"^\[launcher\] worker \d exited with code (-?\d+); restarting.*\n", text, flags=re.M
    )
    codes = [exit_code(int(code)) for code in segments[1::2]] + [exit_code(returncode)]
    return [
        Attempt(*(sent[i] if i < len(sent) else ("", None)), resumed_from(segment), code)
        for i, (segment, code) in enumerate(zip(segments[::2], codes))
    ], text


def soak(job: str, logdir: str, kills: int, rng: random.Random) -> tuple[list[Attempt], str]:
    """Kills the job `kills` times, then lets it finish; returns the attempts and the verdict."""
    final_step = CONFIG.epochs * (50_000 // CONFIG.batch_size)
    reference, output = run_once(job, logdir, f"{job}_reference", None)
    if reference.exit_code:
        return [
            reference
        ], f"FAILED: the uninterrupted run exited {reference.exit_code}:\n" + output[-3000:]
    if job == "healing":
        attempts, output = heal(logdir, kills, rng)
        if attempts[-1].exit_code:
            return attempts, f"FAILED: exited {attempts[-1].exit_code}:\n{output[-3000:]}"
        if sum(bool(attempt.signal) for attempt in attempts) > len(attempts) - 1:
            return attempts, "FAILED: a signal was lost (a kill the job was not restarted after)"
        return attempts, compare_final_checkpoints(logdir, job, final_step)
    attempts = []
    while len(attempts) < kills + 10:  # Room for runs that end before their kill.
        kill = None
        if sum(bool(attempt.signal) for attempt in attempts) < kills:
            kill = (rng.choice(sorted(SIGNALS)), rng.uniform(0, FLAGS.max_moment))
        attempt, output = run_once(job, logdir, f"{job}_chaos", kill)
        attempts.append(attempt)
        print(f"[{job}] attempt {len(attempts)}: {attempt}", file=sys.stderr, flush=True)
        if attempt.exit_code == 0:
            break
        if not attempt.signal:
            return attempts, (
                f"FAILED: attempt {len(attempts)} exited {attempt.exit_code} "
                f"unsignalled:\n{output[-3000:]}"
            )
    else:
        return attempts, "FAILED: did not finish"
    verdict = compare_final_checkpoints(logdir, job, final_step)
    lost = [
        f"attempt {i}: {a.signal} {a.moment:.2f} s after the run directory line, yet exit 0"
        for i, a in enumerate(attempts, 1)
        if a.signal and a.exit_code == 0
    ]
    if lost:  # A scheduler's SIGTERM ignored: it kills the job 30 s later, unsaved.
        return attempts, f"FAILED: a signal was lost ({'; '.join(lost)}); weights {verdict}"
    return attempts, verdict


def compare_final_checkpoints(logdir: str, job: str, final_step: int) -> str:
    want = checkpoint_tensors(
        checkpoint_path(os.path.join(logdir, f"{job}_reference"), final_step), WEIGHTS_AND_OPTIMIZER
    )
    try:
        got = checkpoint_tensors(
            checkpoint_path(os.path.join(logdir, f"{job}_chaos"), final_step), WEIGHTS_AND_OPTIMIZER
        )
        assert_same_tensors(got, want)
    except (AssertionError, ValueError) as e:
        return f"MISMATCH at step {final_step}: {str(e).splitlines()[0][:300]}"
    return f"bitwise equal at step {final_step} ({len(want)} tensors)"


def main(argv):
    if unknown := set(FLAGS.jobs) - set(JOBS):
        sys.exit(f"tests.chaos: error: --jobs: unknown {', '.join(sorted(unknown))}")
    rng = random.Random(FLAGS.seed)
    logdir = FLAGS.logdir or tempfile.mkdtemp(prefix="chaos-")
    verdicts, failed = [], False
    for job in FLAGS.jobs:
        started = time.monotonic()
        attempts, verdict = soak(job, logdir, FLAGS.kills, rng)
        rows = [
            (
                str(i),
                a.signal or "-",
                "-" if a.moment is None else f"{a.moment:.2f} s",
                "-" if a.resumed_from is None else str(a.resumed_from),
                str(a.exit_code),
            )
            for i, a in enumerate(attempts, 1)
        ]
        print(f"\n{job}: {len(attempts)} runs, {time.monotonic() - started:.0f} s\n")
        print(
            markdown_table(("attempt", "signal", "moment", "resumed from step", "exit code"), rows)
        )
        print(f"\n{job}: {verdict}")
        verdicts.append((job, str(sum(bool(a.signal) for a in attempts)), verdict))
        failed |= not verdict.startswith("bitwise equal")
    print("\n" + markdown_table(("job", "kills", "verdict"), verdicts))
    print(f"runs in {logdir}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    app.run(main)
