"""Runs a multi-worker training job on this machine: N trainer processes on 127.0.0.1.

    python -m launch.local --workers=2 -- --epochs=2 --batch_size=256

Each worker is `python -m trainer.train --strategy=multi_worker <trainer flags>` with its own
TF_CONFIG naming every worker on a free loopback port, exactly what a cluster scheduler sets on
real machines. The trainer flags are checked before any worker starts: a misspelt one, or
--strategy (set here), is one line `launch.local: error: ...`. Output is streamed with a
`[worker i]` prefix. If any worker fails, the others are stopped at once and the launcher exits
with that worker's code: a job never hangs waiting on a dead peer.
"""

import json
import signal
import subprocess
import sys
import threading
import time

# Before the imports that load TensorFlow (checking trainer flags does): it sets up what the
# terminal shows of it.
import trainer.terminal

from absl import app, flags, logging

from launch.ports import free_ports
from launch.trainer_args import LaunchError, check_trainer_args

flags.DEFINE_integer("workers", 2, "Worker processes to start.", lower_bound=1)
flags.DEFINE_float("grace_seconds", 10.0,
                   "After a worker fails, how long the others get to exit on SIGTERM before "
                   "they are killed.", lower_bound=0.0)

FLAGS = flags.FLAGS

# {trainer flag: where the launcher sets it}, for the error that refuses it after `--`.
SET_BY_LOCAL = {"strategy": "launch.local (--strategy=multi_worker)"}


def tf_configs(ports: list[int]) -> list[str]:
    """One TF_CONFIG per worker; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(len(ports))]


def _stream(prefix: str, stream, sink) -> None:
    for line in stream:
        sink.write(f"{prefix}{line}")
        sink.flush()


def run_job(num_workers: int, trainer_args: list[str], grace_seconds: float = 10.0,
            sink=sys.stdout, env: dict | None = None) -> int:
    """Starts the workers, streams their output, and returns the job's exit code.

    Raises LaunchError, naming the flag, before any worker starts if a trainer flag is not
    one or is set here. `env` defaults to the environment the user gave this launcher
    (trainer.terminal.user_environ): each worker sets up its terminal from its own flags.
    """
    trainer_args = check_trainer_args(list(trainer_args), SET_BY_LOCAL, replicas=num_workers)
    base_env = dict(trainer.terminal.user_environ() if env is None else env)
    workers = []
    for index, tf_config in enumerate(tf_configs(free_ports(num_workers))):
        process = subprocess.Popen(
            [sys.executable, "-m", "trainer.train", "--strategy=multi_worker", *trainer_args],
            env={**base_env, "TF_CONFIG": tf_config}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        thread = threading.Thread(target=_stream, args=(f"[worker {index}] ", process.stdout, sink),
                                  daemon=True)
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
        _stop(workers, grace_seconds)
    for _, thread in workers:
        thread.join(timeout=5)
    return 0 if failed is None else (failed[1] if failed[1] > 0 else 128 - failed[1])


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


def main(argv):
    logging.set_verbosity(logging.WARNING)
    try:
        code = run_job(FLAGS.workers, argv[1:], FLAGS.grace_seconds)
    except LaunchError as e:
        # One line naming the flag; no worker started.
        sys.exit(f"launch.local: error: {e}")
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
