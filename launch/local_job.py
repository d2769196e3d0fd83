"""launch.local's job: the one process that starts the workers and watches them, inside the
job's private network (launch/private_network.py), so that every worker shares it.

    python -m launch.local_job --workers=N --grace_seconds=S --max_restarts=R \
        --launcher_pid=PID -- TRAINER_FLAGS

Each worker is `python -m trainer.train --strategy=multi_worker <trainer flags>` with its own
TF_CONFIG naming every worker on a free 127.0.0.1 port, exactly what a cluster scheduler sets on
real machines. Output is streamed with a `[worker i]` prefix. If any worker fails, the others
are stopped at once: a job never hangs waiting on a dead peer. A worker preempted (exit 143: it
was sent SIGTERM, or a peer was lost) or killed by a signal gets the whole job started again,
up to R times, and it resumes from its latest checkpoint; any other failure (exit 1: bad flags,
divergence) ends the job with that worker's code.

SIGTERM and SIGINT to this process are requests to stop, passed on to every worker, never a
reason to restart. When the launcher dies (SIGKILL, the OOM killer, a closed terminal) this
process gets SIGHUP (PR_SET_PDEATHSIG) and stops the workers as SIGTERM does, killing what is
left after S seconds; a worker dies with this process. launch.local checks the flags first;
this program loads no TensorFlow.
"""

import argparse
import contextlib
import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

from launch.ports import free_ports

# The trainer's exit code once preempted or when a peer of its job was lost: the job can go on
# from its checkpoints.
from trainer.common import child_processes
from trainer.common.exit_codes import PREEMPTED_EXIT_CODE

# What a launcher and its job take as a request to stop; SIGHUP: the launcher is gone.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What each worker is sent for each, and what the job's output says of it.
_PASSED_AS = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGINT,
    signal.SIGHUP: signal.SIGTERM,
}
_ANNOUNCED = {
    (signal.SIGTERM, 1): "SIGTERM: every worker checkpoints at its next step boundary and "
    "exits 143",
    (signal.SIGINT, 1): "Ctrl-C (SIGINT): every worker checkpoints at its next step boundary "
    "and exits 130; Ctrl-C again stops them at once",
    (signal.SIGINT, 2): "Ctrl-C again: every worker stops at once",
}

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Looked up before any fork: a child calls it between fork and exec.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def die_with_parent(signum: int, parent_pid: int) -> None:
    """Has the kernel send `signum` to this process when `parent_pid`, its parent, exits (the
    thread of it that started this process, to be exact), or sends it now if the parent is
    gone already. Linux only; elsewhere nothing."""
    if _prctl is None:
        return
    if _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:  # It died before prctl: this process was adopted.
        signal.raise_signal(signum)


@contextlib.contextmanager
def stop_signals_blocked():
    """Blocks the stop signals in this thread while it starts a job. The job inherits the mask
    and unblocks them once its handlers are in place (StopRequests): a signal passed on while it
    starts is acted on, not fatal (Python's KeyboardInterrupt) or lost."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopRequests:
    """Within `with` (in the main thread), SIGTERM, SIGINT and SIGHUP (or those of `signals`) to
    this process are requests to stop, passed on to every process added (also to one added
    after they arrived): SIGTERM and SIGINT as themselves, SIGHUP as SIGTERM. The workers
    checkpoint at their next step boundary and exit; a second SIGINT stops them at once.
    Elsewhere (a test calling from a thread of its own) the signals keep their meaning.

    `deadline` is when what still runs is to be killed: `grace_seconds` after a request that
    cannot wait (a second SIGINT, SIGHUP: the launcher is gone); otherwise the workers take the
    time they need to checkpoint.
    """

    def __init__(self, grace_seconds: float = math.inf, signals=STOP_SIGNALS):
        self.received: list[int] = []
        self._signals = signals
        self.deadline = math.inf
        self._grace_seconds = grace_seconds
        self._processes: list[subprocess.Popen] = []
        self._announced = 0
        self._previous = {}

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def interrupted(self) -> bool:
        """Ctrl-C: the shell's exit code for it is 130 (128 + SIGINT)."""
        return signal.SIGINT in self.received

    def add(self, process: subprocess.Popen) -> None:
        self._processes.append(process)
        for signum in self.received:
            process.send_signal(_PASSED_AS[signum])

    def announce(self, output) -> None:
        """Writes a line for each request not yet told of; from the main loop, never from the
        handler, which may interrupt a write to the same stream."""
        while self._announced < len(self.received):
            self._announced += 1
            signum = self.received[self._announced - 1]
            line = _ANNOUNCED.get((signum, self.received[: self._announced].count(signum)))
            if line:
                output.write(f"[launcher] {line}\n")

    def _pass(self, signum, frame) -> None:
        self.received.append(signum)
        if signum == signal.SIGHUP or self.received.count(signal.SIGINT) > 1:
            self.deadline = min(self.deadline, time.monotonic() + self._grace_seconds)
        for process in self._processes:
            process.send_signal(_PASSED_AS[signum])  # Nothing, if it has exited.

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._pass) for signum in self._signals}
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._signals)
        return self

    def __exit__(self, *exc_info):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Output:
    """The job's output, written whole line by line from several threads. Once the launcher
    reading it is gone (a broken pipe), lines are dropped: the workers' own pipes keep being
    drained while they stop, so none blocks on a full pipe before it has checkpointed."""

    def __init__(self, sink):
        self._sink = sink
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            if self._sink is None:
                return
            try:
                self._sink.write(line)
                self._sink.flush()
            except BrokenPipeError:
                self._sink = None


def exit_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: 128 + N when signal N killed it."""
    return returncode if returncode >= 0 else 128 - returncode


def restartable(returncode: int) -> bool:
    """Preempted, a peer lost, or killed by a signal: the job goes on from its checkpoints.
    Not after a Ctrl-C (130, or killed by a second one): someone asked it to stop. Anything
    else (1: bad flags, divergence) would fail again."""
    return returncode == PREEMPTED_EXIT_CODE or returncode < 0 and returncode != -signal.SIGINT


def tf_configs(ports: list[int]) -> list[str]:
    """One TF_CONFIG per worker; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [
        json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        for index in range(len(ports))
    ]


def _stream(prefix: str, stream, output: Output) -> None:
    for line in stream:
        output.write(f"{prefix}{line}")


def run_workers(
    num_workers: int,
    trainer_args: list[str],
    grace_seconds: float,
    max_restarts: int = 0,
    sink=sys.stdout,
) -> int:
    """Runs the job to its end, restarting it up to `max_restarts` times after a worker is
    preempted or killed, and returns the job's exit code."""
    output = Output(sink)
    restarts_left = max_restarts
    with StopRequests(grace_seconds) as stop:
        while True:
            workers = _start_workers(num_workers, trainer_args, stop, output)
            failed = _watch(workers, stop, output)
            restart = (
                failed is not None
                and not stop.requested
                and restartable(failed[1])
                and restarts_left > 0
            )
            if failed is not None and not stop.requested:
                restarts_left -= restart
                output.write(_failure_line(*failed, restart, restarts_left, max_restarts))
            child_processes.stop(
                [process for process, _ in workers],
                min(stop.deadline, time.monotonic() + grace_seconds),
            )
            for _, thread in workers:
                thread.join(timeout=5)
            stop.announce(output)
            if not restart or stop.requested:
                break
    if not workers:  # Stopped before any worker started.
        return 128 + _PASSED_AS[stop.received[0]]
    if failed is None:  # All exited, or the deadline passed: the first that did not exit 0.
        failed = next(
            ((i, p.returncode) for i, (p, _) in enumerate(workers) if p.returncode != 0), None
        )
    return 0 if failed is None else exit_code(failed[1])


def _failure_line(
    index: int, returncode: int, restart: bool, restarts_left: int, max_restarts: int
) -> str:
    """What the job's output says when a worker fails: why, and what happens next."""
    if restart:
        then = (
            f"restarting the job from its latest checkpoint ({restarts_left} "
            f"restart{'' if restarts_left == 1 else 's'} left)"
        )
    else:
        then = "stopping the job" + (
            " (no restarts left)" if max_restarts and restartable(returncode) else ""
        )
    return f"[launcher] worker {index} exited with code {returncode}; {then}\n"


def _start_workers(
    num_workers: int, trainer_args: list[str], stop: StopRequests, output: Output
) -> list[tuple[subprocess.Popen, threading.Thread]]:
    """Starts the workers (none after a stop request), then the threads streaming their output:
    each child is forked while this process has no other thread, for the prctl it runs before
    exec (die_with_parent)."""
    processes = []
    # Free in the namespace the workers share, where they will listen.
    for tf_config in tf_configs(free_ports(num_workers)):
        if stop.requested:
            break
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "trainer.train", "--strategy=multi_worker", *trainer_args],
                env={**os.environ, "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                # Nothing else will kill a worker if this process is killed.
                preexec_fn=lambda parent=os.getpid(): die_with_parent(signal.SIGKILL, parent),
            )
        )
        stop.add(processes[-1])
    workers = []
    for index, process in enumerate(processes):
        thread = threading.Thread(
            target=_stream, daemon=True, args=(f"[worker {index}] ", process.stdout, output)
        )
        thread.start()
        workers.append((process, thread))
    return workers


def _watch(workers, stop: StopRequests, output: Output) -> tuple[int, int] | None:
    """Waits until every worker has exited 0 (None), one has failed ((index, returncode) of the
    first), or the stop's deadline has passed (None)."""
    while time.monotonic() < stop.deadline:
        stop.announce(output)
        codes = [process.poll() for process, _ in workers]
        failed = next(((i, code) for i, code in enumerate(codes) if code not in (None, 0)), None)
        if failed is not None or all(code == 0 for code in codes):
            return failed
        time.sleep(0.2)
    return None


def command(
    num_workers: int, trainer_args: list[str], grace_seconds: float, max_restarts: int = 0
) -> list[str]:
    """The command line that runs this job for this launcher (trainer_args already checked)."""
    return [
        sys.executable,
        "-m",
        "launch.local_job",
        f"--workers={num_workers}",
        f"--grace_seconds={grace_seconds}",
        f"--max_restarts={max_restarts}",
        f"--launcher_pid={os.getpid()}",
        "--",
        *trainer_args,
    ]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="launch.local_job")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--grace_seconds", type=float, required=True)
    parser.add_argument("--max_restarts", type=int, default=0)
    parser.add_argument("--launcher_pid", type=int, required=True)
    parser.add_argument("trainer_args", nargs="*")
    args = parser.parse_args(argv)
    # SIGHUP stays blocked, as the launcher started this process, until StopRequests handles it.
    die_with_parent(signal.SIGHUP, args.launcher_pid)
    sys.exit(run_workers(args.workers, args.trainer_args, args.grace_seconds, args.max_restarts))


if __name__ == "__main__":
    main(sys.argv[1:])
