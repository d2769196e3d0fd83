"""launch.local's job: the one process that starts the workers and watches them, inside the
job's private network (launch/private_network.py), so that every worker shares it.

    python -m launch.local_job --grace_seconds=S --workers=N -- TRAINER_FLAGS

Each worker is `python -m trainer.train --strategy=multi_worker <trainer flags>` with its own
TF_CONFIG naming every worker on a free 127.0.0.1 port, exactly what a cluster scheduler sets on
real machines. Output is streamed with a `[worker i]` prefix. If any worker fails, the others
are stopped at once and the job exits with that worker's code: a job never hangs waiting on a
dead peer. SIGTERM to this process is passed on to the workers. launch.local checks the flags
first; this program loads no TensorFlow.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

from launch.ports import free_ports


class PassSigterm:
    """Within `with` (in the main thread), SIGTERM to this process is passed on to the processes
    added, also to one added after it arrived; they checkpoint and exit 143. Elsewhere (a test
    calling from a thread of its own) SIGTERM keeps its meaning."""

    def __init__(self):
        self._processes: list[subprocess.Popen] = []
        self._received = False
        self._previous = None

    def add(self, process: subprocess.Popen) -> None:
        self._processes.append(process)
        if self._received:
            process.send_signal(signal.SIGTERM)

    def _pass(self, signum, frame) -> None:
        self._received = True
        for process in self._processes:
            process.send_signal(signal.SIGTERM)  # Nothing, if it has exited.

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._pass)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def exit_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: 128 + N when signal N killed it."""
    return returncode if returncode >= 0 else 128 - returncode


def tf_configs(ports: list[int]) -> list[str]:
    """One TF_CONFIG per worker; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(len(ports))]


def _stream(prefix: str, stream, sink) -> None:
    for line in stream:
        sink.write(f"{prefix}{line}")
        sink.flush()


def run_workers(num_workers: int, trainer_args: list[str], grace_seconds: float,
                sink=sys.stdout) -> int:
    """Starts the workers, streams their output, and returns the job's exit code."""
    workers = []
    with PassSigterm() as sigterm:
        # Free in the namespace the workers share, where they will listen.
        for index, tf_config in enumerate(tf_configs(free_ports(num_workers))):
            process = subprocess.Popen(
                [sys.executable, "-m", "trainer.train", "--strategy=multi_worker",
                 *trainer_args], env={**os.environ, "TF_CONFIG": tf_config},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            sigterm.add(process)
            thread = threading.Thread(target=_stream, daemon=True,
                                      args=(f"[worker {index}] ", process.stdout, sink))
            thread.start()
            workers.append((process, thread))

        failed = None
        while failed is None and any(p.poll() is None for p, _ in workers):
            failed = next(((i, p.returncode) for i, (p, _) in enumerate(workers)
                           if p.poll() not in (None, 0)), None)
            time.sleep(0.2)
        if failed is None:  # All exited: did any fail at the very end?
            failed = next(((i, p.returncode) for i, (p, _) in enumerate(workers)
                           if p.returncode != 0), None)
        if failed is not None:
            index, code = failed
            sink.write(f"[launcher] worker {index} exited with code {code}; stopping the job\n")
            sink.flush()
            _stop(workers, grace_seconds)
    for _, thread in workers:
        thread.join(timeout=5)
    return 0 if failed is None else exit_code(failed[1])


def _stop(workers, grace_seconds: float) -> None:
    """SIGTERM first (a worker checkpoints and exits), SIGKILL for what is left after grace."""
    for process, _ in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process, _ in workers:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def command(num_workers: int, trainer_args: list[str], grace_seconds: float) -> list[str]:
    """The command line that runs this job (trainer_args already checked)."""
    return [sys.executable, "-m", "launch.local_job", f"--workers={num_workers}",
            f"--grace_seconds={grace_seconds}", "--", *trainer_args]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="launch.local_job")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--grace_seconds", type=float, required=True)
    parser.add_argument("trainer_args", nargs="*")
    args = parser.parse_args(argv)
    sys.exit(run_workers(args.workers, args.trainer_args, args.grace_seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
