"""Runs a multi-worker training job on this machine: N trainer processes on 127.0.0.1.

    python -m launch.local --workers=2 -- --epochs=2 --batch_size=256
    python -m launch.local --workers=2 --max_restarts=3 -- --epochs=2   # heals itself

Each worker is `python -m trainer.train --strategy=multi_worker <trainer flags>` with its own
TF_CONFIG naming every worker on a free loopback port, exactly what a cluster scheduler sets on
real machines. The trainer flags are checked before any worker starts: a misspelt one, or
--strategy (set here), is one line `launch.local: error: ...`. Output is streamed with a
`[worker i]` prefix. If any worker fails, the others are stopped at once: a job never hangs
waiting on a dead peer. With --max_restarts, as torchrun's, a worker preempted (exit 143) or
killed by a signal gets the whole job restarted, from its latest checkpoint; any other failure
ends it with that worker's code.

SIGTERM to the launcher reaches every worker, which checkpoint and exit 143; Ctrl-C (SIGINT)
likewise, and the launcher exits 130; a second Ctrl-C stops them at once. Neither is ever a
reason to restart. The job runs in a process group of its own, so a terminal's Ctrl-C reaches
the launcher alone, which passes it on once. Ctrl-Z (SIGTSTP, from the terminal or kill -TSTP)
suspends the whole job, then the launcher, as a shell user expects; `fg`, `bg` or SIGCONT to the
launcher resumes both. After more than 10 s suspended (TensorFlow's heartbeat timeout) the
workers take each other for lost and exit 143, which --max_restarts restarts from the latest
checkpoint. If the launcher dies (SIGKILL, the OOM killer), its job stops as on SIGTERM, and
what is left after --grace_seconds is killed.

The workers share a private network (launch/private_network.py): their gRPC servers listen on
all interfaces and run any op they are sent, unauthenticated, so nothing outside the job may
reach them. Where the kernel cannot make one, the job does not start unless
--allow_exposed_ports says it may run with those ports open.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading

# Before the imports that load TensorFlow (checking trainer flags does): it sets up what the
# terminal shows of it.
from trainer.common import terminal  # isort: split

from absl import app, flags, logging

from launch import local_job, private_network
from launch.trainer_args import MULTI_WORKER_FLAG, LaunchError, check_trainer_args

flags.DEFINE_integer("workers", 2, "Worker processes to start.", lower_bound=1)
flags.DEFINE_float(
    "grace_seconds",
    10.0,
    "After a worker fails, a second Ctrl-C or the launcher's death, how long the "
    "workers get to exit before they are killed.",
    lower_bound=0.0,
)
flags.DEFINE_integer(
    "max_restarts",
    0,
    "How many times the whole job is started again, from its latest "
    "checkpoint, after a worker is preempted (exit 143) or killed by a signal.",
    lower_bound=0,
)
flags.DEFINE_bool(
    "allow_exposed_ports",
    False,
    "Where no private network namespace can be made (not Linux, or unprivileged "
    "user namespaces disabled), run the job anyway with the workers' gRPC ports "
    "open on every interface: anyone who reaches them can run any TensorFlow op "
    "in a worker.",
)

FLAGS = flags.FLAGS

# {trainer flag: where the launcher sets it}, for the error that refuses it after `--`.
SET_BY_LOCAL = {"strategy": "launch.local (--strategy=multi_worker)"}


def run_job(
    num_workers: int,
    trainer_args: list[str],
    grace_seconds: float = 10.0,
    allow_exposed_ports: bool = False,
    sink=sys.stdout,
    env: dict | None = None,
    max_restarts: int = 0,
) -> int:
    """Starts the job (launch/local_job.py) in a private network, streams its output, and
    returns its exit code: 130 after Ctrl-C.

    Raises LaunchError before any worker starts if a trainer flag is not one or is set here,
    or if no private network can be made and `allow_exposed_ports` is False. `env` defaults to
    the environment the user gave this launcher (terminal.user_environ): each worker
    sets up its terminal from its own flags.
    """
    trainer_args = check_trainer_args(
        list(trainer_args), SET_BY_LOCAL, replicas=num_workers, launcher_args=(MULTI_WORKER_FLAG,)
    )
    command = local_job.command(num_workers, trainer_args, grace_seconds, max_restarts)
    # A process group of its own: a terminal's Ctrl-C, sent to its foreground group, reaches
    # this process alone, and each worker gets the one SIGINT passed on. So does Ctrl-Z, which
    # this process passes on to the whole group (Suspension).
    options = dict(
        env=dict(terminal.user_environ() if env is None else env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        process_group=0,
    )
    # SIGHUP (a closed terminal) ends this process as usual; the job is told (die_with_parent).
    with (
        local_job.StopRequests(signals=(signal.SIGTERM, signal.SIGINT)) as stop,
        Suspension() as suspension,
    ):
        with local_job.stop_signals_blocked():
            job = _start(command, options, allow_exposed_ports, sink)
        stop.add(job)
        suspension.add(job)
        for line in job.stdout:
            sink.write(line)
            sink.flush()
        code = local_job.exit_code(job.wait())
        return 128 + signal.SIGINT if stop.interrupted else code


class Suspension:
    """Within `with` (in the main thread), SIGTSTP to this process (a terminal's Ctrl-Z, kill
    -TSTP) suspends the process group of each job added, then this process; once this process
    is continued (`fg`, `bg`, SIGCONT), it continues them. Elsewhere SIGTSTP keeps its meaning.

    A job's processes get SIGTSTP as a terminal would send it, and stop. This process stops
    itself as the signal's default action would, so its shell sees it stopped; the kernel
    ignores that in a process group no shell controls (an orphaned one), and then the job is
    continued at once too.
    """

    def __init__(self):
        self._groups: list[int] = []
        self._previous = None

    def add(self, process: subprocess.Popen) -> None:
        self._groups.append(process.pid)  # Its process group's id (process_group=0).

    def _suspend(self, signum, frame) -> None:
        self._send(signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTSTP)  # Returns once this process is continued.
        signal.signal(signal.SIGTSTP, self._suspend)
        self._send(signal.SIGCONT)

    def _send(self, signum: int) -> None:
        for group in self._groups:
            with contextlib.suppress(ProcessLookupError):  # The job has ended.
                os.killpg(group, signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTSTP, self._suspend)
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGTSTP, self._previous)


def _start(command: list[str], options: dict, allow_exposed_ports: bool, sink):
    """The job's process, in a private network, or in this one with `allow_exposed_ports`."""
    try:
        return private_network.start(command, **options)
    except private_network.Unavailable as e:
        if not allow_exposed_ports:
            raise LaunchError(
                f"cannot give the workers a private network ({e}); without one their gRPC "
                "servers listen on every interface and run any op anyone sends; "
                "--allow_exposed_ports runs the job anyway"
            ) from None
        sink.write(
            f"[launcher] warning: no private network for the workers ({e}): their "
            "gRPC servers listen on every interface of this machine, "
            "unauthenticated, and run any op anyone sends (--allow_exposed_ports)\n"
        )
        sink.flush()
        return subprocess.Popen(command, **options)


def main(argv):
    logging.set_verbosity(logging.WARNING)
    try:
        code = run_job(
            FLAGS.workers,
            argv[1:],
            grace_seconds=FLAGS.grace_seconds,
            allow_exposed_ports=FLAGS.allow_exposed_ports,
            max_restarts=FLAGS.max_restarts,
        )
    except LaunchError as e:
        # One line naming the flag; no worker started.
        terminal.exit_with_error(e)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
