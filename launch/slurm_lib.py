"""The batch script of one multi-worker run on Slurm, and its submission with sbatch.

One trainer per Slurm task (`srun` starts `--nodes` x `--tasks_per_node` of them), each
`python -m trainer.train --strategy=multi_worker` finding the others from what srun tells it
(trainer/distribution/slurm.py): rank 0 is the chief. GPUs are asked for per node with
`--gres=gpu:N` and shared out equally among a node's tasks.

Preemption: Slurm sends SIGTERM to the trainers `signal_seconds` before the time limit
(`--signal=TERM@...`, to the job's steps, not to the batch shell), and a preempting scheduler
sends it too. The trainers then checkpoint the same step and exit 143; the script sees srun
exit 143 and requeues the job (`scontrol requeue`, allowed by `--requeue`), whose next attempt
resumes from the checkpoint. Any other failure (exit 1: bad flags, divergence) ends the job as
FAILED, with no requeue.
"""

import dataclasses
import re
import shlex
import subprocess
import sys

from launch.trainer_args import MULTI_WORKER_FLAG, LaunchError, check_trainer_args
from trainer.common.exit_codes import PREEMPTED_EXIT_CODE
from trainer.common.paths import REPOSITORY

# The repository the trainers run from: this checkout, on a filesystem every node shares.
# Trainer flags the script sets for every task, and where the user's setting belongs instead.
SET_BY_SCRIPT = {"strategy": "launch.slurm (--strategy=multi_worker)"}
# Slurm's most for --signal's seconds (a 16-bit field).
MAX_SIGNAL_SECONDS = 65535
# After one trainer ends, how long the others have to end too: the chief's export and
# result.json come after the others are done, and must fit in it.
PEERS_END_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    name: str = "mlp-train"
    nodes: int = 1
    tasks_per_node: int = 1  # One trainer process each.
    gpus_per_node: int = 0  # --gres=gpu:N, shared equally by the node's tasks.
    cpus_per_task: int = 0  # 0: the cluster's default.
    time: str = ""  # --time; empty: the partition's default.
    partition: str = ""  # Empty: the cluster's default partition.
    signal_seconds: int = 120  # SIGTERM this long before the time limit.
    output: str = "slurm-%x-%j.out"  # Relative to the repository; every attempt appends.
    python: str = sys.executable  # Must exist at this path on every node.
    trainer_args: tuple[str, ...] = ()

    @property
    def replicas(self) -> int:
        """Replicas in sync: one per GPU, or one per task without GPUs."""
        return self.nodes * (self.gpus_per_node or self.tasks_per_node)

    def validate(self) -> "SlurmJob":
        """Raises LaunchError naming the first bad flag; returns self for chaining."""
        self.validate_resources()
        check_trainer_args(
            list(self.trainer_args),
            SET_BY_SCRIPT,
            replicas=self.replicas,
            launcher_args=(MULTI_WORKER_FLAG,),
        )
        return self

    def validate_resources(self) -> "SlurmJob":
        """validate() but the trainer flags: for a job whose program picks them (a sweep's
        array task)."""

        def need(ok, flag, problem):
            if not ok:
                raise LaunchError(f"--{flag}={getattr(self, flag)}: {problem}")

        need(re.fullmatch(r"[\w.-]+", self.name), "name", "must be letters, digits, _, . and -")
        need(self.nodes >= 1, "nodes", "must be at least 1")
        need(self.tasks_per_node >= 1, "tasks_per_node", "must be at least 1")
        need(self.gpus_per_node >= 0, "gpus_per_node", "must be 0 (CPU only) or more")
        need(
            self.gpus_per_node % self.tasks_per_node == 0,
            "gpus_per_node",
            f"must divide equally among the --tasks_per_node={self.tasks_per_node} tasks",
        )
        need(self.cpus_per_task >= 0, "cpus_per_task", "must be 0 (the cluster's default) or more")
        need(
            re.fullmatch(r"[\w:+-]*", self.time),
            "time",
            "must be a Slurm time limit such as 2:00:00 or 1-12:00:00",
        )
        need(
            re.fullmatch(r"[\w,.-]*", self.partition),
            "partition",
            "must be partition names, comma-separated",
        )
        need(
            0 <= self.signal_seconds <= MAX_SIGNAL_SECONDS,
            "signal_seconds",
            f"must be 0 to {MAX_SIGNAL_SECONDS}",
        )
        need(self.output.strip() and "\n" not in self.output, "output", "must be a file name")
        return self


def batch_script(job: SlurmJob) -> str:
    """The sbatch script: #SBATCH options, then srun of the trainers and the requeue rule."""
    job.validate()
    trainer = [job.python, "-m", "trainer.train", MULTI_WORKER_FLAG, *job.trainer_args]
    return _script(job, trainer, [], "launch.slurm")


def array_script(job: SlurmJob, program: list[str], array: str) -> str:
    """The sbatch script of a job array (`--array=<array>`, e.g. `0-3%2`) whose every task runs
    `program` as batch_script runs the trainers, with the same requeue rule; job.trainer_args
    are not used: the program picks each task's flags by SLURM_ARRAY_TASK_ID."""
    job.validate_resources()
    return _script(job, program, [f"--array={array}"], "launch.sweep")


def _script(job: SlurmJob, program: list[str], array: list[str], launcher: str) -> str:
    options = [
        f"--job-name={job.name}",
        *array,
        f"--nodes={job.nodes}",
        f"--ntasks-per-node={job.tasks_per_node}",
        f"--chdir={REPOSITORY}",
        f"--output={job.output}",
        # Each attempt's output follows the previous one's instead of replacing it.
        "--open-mode=append",
        # SIGTERM to the trainers (the job's steps), so they checkpoint before the kill.
        f"--signal=TERM@{job.signal_seconds}",
        "--requeue",
    ]
    if job.gpus_per_node:
        options.append(f"--gres=gpu:{job.gpus_per_node}")
    if job.cpus_per_task:
        options.append(f"--cpus-per-task={job.cpus_per_task}")
    if job.time:
        options.append(f"--time={job.time}")
    if job.partition:
        options.append(f"--partition={job.partition}")
    # --distribution=block: the rank order job_step_cluster derives the cluster from.
    # --wait: once one trainer has ended, the others get this long to end too, then are
    # stopped, rather than waiting on a dead peer. Not --kill-on-bad-exit: it kills the others
    # the moment one exits 143, before they have exited 143 themselves, and srun then says 137.
    # --gpu-bind=none: each task sees its node's GPUs; the trainer takes its share of them.
    srun = [
        "srun",
        "--distribution=block",
        f"--wait={PEERS_END_SECONDS}",
        *(["--gpu-bind=none"] if job.gpus_per_node else []),
        *program,
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            f"# Written by python -m {launcher}; submit it with sbatch.",
            *(f"#SBATCH {option}" for option in options),
            "",
            f'echo "{launcher}: job $SLURM_JOB_ID attempt $((${{SLURM_RESTART_COUNT:-0}} + 1))'
            ' on $SLURM_JOB_NODELIST"',
            " ".join(map(shlex.quote, srun)),
            "code=$?",
            f"# {PREEMPTED_EXIT_CODE}: the trainers were preempted by SIGTERM and saved a "
            "checkpoint;",
            "# run the job again to resume from it. Any other failure stays failed.",
            f"if [ $code -eq {PREEMPTED_EXIT_CODE} ]; then",
            f'    echo "{launcher}: preempted (exit code $code); requeueing job $SLURM_JOB_ID"',
            '    scontrol requeue "$SLURM_JOB_ID"',
            "fi",
            "exit $code",
            "",
        ]
    )


def submit(script: str, sbatch: str = "sbatch", env: dict | None = None) -> str:
    """Submits `script` with sbatch and returns the job id."""
    try:
        done = subprocess.run(
            [sbatch, "--parsable"], input=script, capture_output=True, text=True, env=env
        )
    except FileNotFoundError:
        raise LaunchError(f"--submit: {sbatch} not found; is this a Slurm login node?") from None
    if done.returncode:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise LaunchError(
            f"--submit: sbatch failed (exit code {done.returncode}): "
            + "; ".join(line.strip() for line in said)
        )  # One line.
    return done.stdout.strip().split(";")[0]  # --parsable: "<id>" or "<id>;<cluster>".
