"""Runs a multi-worker training job on this machine: N trainer processes on 127.0.0.1.

    python -m launch.local --workers=2 -- --epochs=2 --batch_size=256

Each worker is `python -m trainer.train --strategy=multi_worker <trainer flags>` with its own
TF_CONFIG naming every worker on a free loopback port, exactly what a cluster scheduler sets on
real machines. The trainer flags are checked before any worker starts: a misspelt one, or
--strategy (set here), is one line `launch.local: error: ...`. Output is streamed with a
`[worker i]` prefix. If any worker fails, the others are stopped at once and the launcher exits
with that worker's code: a job never hangs waiting on a dead peer. SIGTERM to the launcher
reaches every worker, which checkpoint and exit 143.

The workers share a private network (launch/private_network.py): their gRPC servers listen on
all interfaces and run any op they are sent, unauthenticated, so nothing outside the job may
reach them. Where the kernel cannot make one, the job does not start unless
--allow_exposed_ports says it may run with those ports open.
"""

import subprocess
import sys

# Before the imports that load TensorFlow (checking trainer flags does): it sets up what the
# terminal shows of it.
import trainer.terminal

from absl import app, flags, logging

from launch import local_job, private_network
from launch.trainer_args import MULTI_WORKER_FLAG, LaunchError, check_trainer_args

flags.DEFINE_integer("workers", 2, "Worker processes to start.", lower_bound=1)
flags.DEFINE_float("grace_seconds", 10.0,
                   "After a worker fails, how long the others get to exit on SIGTERM before "
                   "they are killed.", lower_bound=0.0)
flags.DEFINE_bool("allow_exposed_ports", False,
                  "Where no private network namespace can be made (not Linux, or unprivileged "
                  "user namespaces disabled), run the job anyway with the workers' gRPC ports "
                  "open on every interface: anyone who reaches them can run any TensorFlow op "
                  "in a worker.")

FLAGS = flags.FLAGS

# {trainer flag: where the launcher sets it}, for the error that refuses it after `--`.
SET_BY_LOCAL = {"strategy": "launch.local (--strategy=multi_worker)"}


def run_job(num_workers: int, trainer_args: list[str], grace_seconds: float = 10.0,
            allow_exposed_ports: bool = False, sink=sys.stdout, env: dict | None = None) -> int:
    """Starts the job (launch/local_job.py) in a private network, streams its output, and
    returns its exit code.

    Raises LaunchError before any worker starts if a trainer flag is not one or is set here,
    or if no private network can be made and `allow_exposed_ports` is False. `env` defaults to
    the environment the user gave this launcher (trainer.terminal.user_environ): each worker
    sets up its terminal from its own flags.
    """
    trainer_args = check_trainer_args(list(trainer_args), SET_BY_LOCAL,
                                      replicas=num_workers, launcher_args=(MULTI_WORKER_FLAG,))
    command = local_job.command(num_workers, trainer_args, grace_seconds)
    options = dict(env=dict(trainer.terminal.user_environ() if env is None else env),
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    with local_job.PassSigterm() as sigterm:
        try:
            job = private_network.start(command, **options)
        except private_network.Unavailable as e:
            if not allow_exposed_ports:
                raise LaunchError(
                    f"cannot give the workers a private network ({e}); without one their gRPC "
                    "servers listen on every interface and run any op anyone sends; "
                    "--allow_exposed_ports runs the job anyway") from None
            sink.write(f"[launcher] warning: no private network for the workers ({e}): their "
                       "gRPC servers listen on every interface of this machine, "
                       "unauthenticated, and run any op anyone sends (--allow_exposed_ports)\n")
            sink.flush()
            job = subprocess.Popen(command, **options)
        sigterm.add(job)
        for line in job.stdout:
            sink.write(line)
            sink.flush()
        return local_job.exit_code(job.wait())


def main(argv):
    logging.set_verbosity(logging.WARNING)
    try:
        code = run_job(FLAGS.workers, argv[1:], FLAGS.grace_seconds, FLAGS.allow_exposed_ports)
    except LaunchError as e:
        # One line naming the flag; no worker started.
        sys.exit(f"launch.local: error: {e}")
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
