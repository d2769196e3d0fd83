"""A sweep as one Slurm job array: a task a run, `--parallel` at once (`--array=...%N`).

Each array task runs `python -m launch.sweep_task <sweep_dir>/sweep.json` under srun, which
picks its run's flags from the plan by SLURM_ARRAY_TASK_ID and becomes that run's trainer
(launch/sweep_task.py). A task is a job of its own to Slurm, with launch.slurm's resources
(nodes, tasks per node, GPUs) and its requeue rule (launch/slurm_lib.py): a trainer stopped by
SIGTERM checkpoints and exits 143, and the task requeues itself to resume. A run of several
Slurm tasks is a multi-worker run (`--strategy=multi_worker`, the trainers meeting through
srun's environment). The array holds only the runs not finished and not running, so
resubmitting the same sweep runs only what is left.
"""

from launch.slurm_lib import SlurmJob, array_script
from launch.sweep_plan import PLAN_FILE, Sweep
from launch.trainer_args import MULTI_WORKER_FLAG, LaunchError, trainer_config
from trainer.config import ConfigError, check_batch_split

# Where each array task's own lines (srun's, the requeue's) go: %A the array's job id, %a the
# task's index. The trainer's output goes to its run's train.log.
ARRAY_OUTPUT = "slurm-%A_%a.out"


def check_runs_fit(sweep: Sweep, job: SlurmJob) -> None:
    """With several tasks a run, each run's global batch must split among the replicas."""
    if job.nodes * job.tasks_per_node == 1:
        return
    for run in sweep.runs:
        config = trainer_config([MULTI_WORKER_FLAG, *sweep.run_flags(run)])
        try:
            check_batch_split(config.batch_size, job.replicas, config.grad_accum_steps)
        except ConfigError as e:
            raise LaunchError(f"run {run.name}: {e}") from None


def array_spec(indices: list[int], parallel: int) -> str:
    """sbatch's --array value: the indices as ranges, at most `parallel` at once."""
    ranges, start = [], None
    for i, index in enumerate(indices):
        if start is None:
            start = index
        if i + 1 == len(indices) or indices[i + 1] != index + 1:
            ranges.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return f"{','.join(ranges)}%{parallel}"


def sweep_script(sweep: Sweep, job: SlurmJob, indices: list[int], parallel: int) -> str:
    """The array's batch script, for the plan's runs at `indices`."""
    multi_worker = [MULTI_WORKER_FLAG] if job.nodes * job.tasks_per_node > 1 else []
    program = [job.python, "-m", "launch.sweep_task", f"{sweep.sweep_dir}/{PLAN_FILE}"]
    return array_script(job, [*program, *multi_worker], array_spec(indices, parallel))
