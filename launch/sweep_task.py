"""One run of a sweep's plan, as a Slurm array task or an Indexed Job's pod runs it.

    python -m launch.sweep_task [PLAN] [--<trainer flag>=<value> ...]

The task's index (Slurm's SLURM_ARRAY_TASK_ID, or Kubernetes' JOB_COMPLETION_INDEX) picks the
run from the plan that launch.sweep wrote (sweep.json: each run's name and flags), never from
flags rebuilt in shell. PLAN is $SWEEP_PLAN if not given; the sweep's directory is $SWEEP_DIR,
or else the plan's own. Flags after PLAN follow the run's own (launch.sweep gives
--strategy=multi_worker to a run of several Slurm tasks).

The trainer's output is appended to the run's train.log, headed as launch.sweep heads a local
attempt, and the process then becomes the trainer (exec), so the engine's SIGTERM reaches the
trainer itself. Before that, worker 0 (Slurm's rank 0, or the only task) writes its run's
HParams values and, if no task has yet, the sweep's experiment, unless the launcher has (as on
Slurm), and keeps a copy of the plan in
the sweep's directory for `launch.sweep --status` (an Indexed Job's comes from a ConfigMap).
"""

import glob
import json
import os
import sys

# Before the imports that may load TensorFlow: it sets up what the terminal shows of it.
from trainer.common import terminal  # isort: split

from launch.sweep_plan import PLAN_FILE, read_plan
from launch.sweep_report import EXPERIMENT_SUFFIX, LOG_FILE, SESSION_SUFFIX, attempt_header

# Where each engine tells a task its index.
INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")


def task_run(plan_path: str, sweep_dir: str) -> tuple[dict, dict]:
    """The plan, and its run at this task's index; exits with one line if there is none."""
    plan = read_plan(plan_path)
    if plan is None:
        terminal.exit_with_error(f"{plan_path}: no such plan; launch.sweep writes it")
    index = next((os.environ[v] for v in INDEX_VARIABLES if v in os.environ), None)
    if index is None or not index.isdigit() or int(index) >= len(plan["runs"]):
        terminal.exit_with_error(
            f"task index {index}: expected one of 0 to {len(plan['runs']) - 1} in "
            f"{' or '.join(INDEX_VARIABLES)}"
        )
    return plan, plan["runs"][int(index)]


def main(argv: list[str]) -> None:
    if argv[:1] in (["--help"], ["-h"]):
        print(
            f"usage: python -m launch.sweep_task [PLAN] [--<trainer flag>=<value> ...]\n{__doc__}"
        )
        return
    plan_arg = argv[0] if argv and not argv[0].startswith("--") else None
    extra_flags = argv[1:] if plan_arg else argv
    plan_path = plan_arg or os.environ.get("SWEEP_PLAN", "")
    sweep_dir = os.environ.get("SWEEP_DIR") or os.path.dirname(os.path.abspath(plan_path))
    plan, run = task_run(plan_path, sweep_dir)
    run_dir = os.path.join(sweep_dir, run["name"])
    os.makedirs(run_dir, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "trainer.train",
        f"--logdir={sweep_dir}",
        *run["flags"],
        *extra_flags,
    ]
    log = os.open(os.path.join(run_dir, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    is_worker_0 = int(os.environ.get("SLURM_PROCID", 0)) == 0
    if is_worker_0:
        os.write(log, attempt_header(command).encode())
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
        os.dup2(log, stream.fileno())
    os.close(log)
    if is_worker_0:
        _record(sweep_dir, plan, run)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, terminal.user_environ())


def _record(sweep_dir: str, plan: dict, run: dict) -> None:
    """The plan's copy and the HParams summaries, for --status and TensorBoard."""
    copy = os.path.join(sweep_dir, PLAN_FILE)
    if read_plan(copy) is None:
        with open(f"{copy}.{os.getpid()}.tmp", "w") as f:
            json.dump(plan, f, indent=2)
        os.replace(f"{copy}.{os.getpid()}.tmp", copy)
    written = [
        glob.glob(os.path.join(directory, f"*{suffix}"))
        for directory, suffix in [
            (sweep_dir, EXPERIMENT_SUFFIX),
            (os.path.join(sweep_dir, run["name"]), SESSION_SUFFIX),
        ]
    ]
    if all(written):  # As launch.sweep --engine=slurm wrote them before submitting.
        return
    terminal.load_tensorflow()
    from launch.sweep_lib import write_hparams

    write_hparams(sweep_dir, plan, runs=[run])


if __name__ == "__main__":
    main(sys.argv[1:])
