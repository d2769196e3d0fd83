"""Sweeps trainer flags, a grid or a quasirandom search: one run of `python -m trainer.train`
for each point, here, as a Slurm job array, or as a Kubernetes Indexed Job.

    python -m launch.sweep --sweep_dir=runs/sweep1 --parallel=2 \\
        --grid=optimizer=adam,momentum --grid=learning_rate=1e-3,2e-3 \\
        -- --epochs=3 --data_source=bundled

Each --grid is `<trainer flag>=<value>,<value>,...` (a list flag's items joined by x:
`hidden_sizes=700x500,256`); the runs are every combination, named after their values, e.g.
runs/sweep1/optimizer=adam,learning_rate=0.001/. --search=FILE with --trials=N adds N
quasirandom points of an AlgoPerf-style search space (launch/sweep_search.py), seeded by
--search_seed; --seeds=K repeats every point on --seed=0 to K-1, and the table adds each
point's mean and spread. Flags after `--` go to every run, after those of --base_flagfile (a
run's flags.txt works). The plan (every run's name and flags) is written to <sweep_dir>/sweep.json;
rerunning the same command plans the same runs, and skips or leaves out the finished ones.
TensorBoard's HParams tab compares the runs: .venv/bin/tensorboard --logdir runs/sweep1.

--engine=local (the default) runs the trainers here, --parallel at a time, each one's output
appended to <run>/train.log, and prints a table of every run's values, test accuracy and status
at the end. SIGTERM or Ctrl-C (SIGINT) stops the sweep: no run starts after it, and the signal
is passed on to the running trainers, which checkpoint at their next step and exit; a second
Ctrl-C stops them at once. The exit code is 130 after Ctrl-C, as for launch.local and the
trainer; otherwise 1 if any run failed, 143 after SIGTERM (preempted: the same command
resumes), 0 if every run finished.

--engine=slurm writes the batch script of a job array (a task a run, --parallel at once, each
with launch.slurm's --nodes, --tasks_per_node, ...) to stdout or --script; --submit submits it
with sbatch and prints the job id. --engine=kubernetes prints the manifests of an Indexed Job (a
pod a run, the plan in a ConfigMap) for `kubectl apply -f -`, its --sweep_dir a directory on
--claim. --status --sweep_dir=DIR prints the table of a sweep run by any engine, from its files.
"""

import dataclasses
import os
import shutil
import sys

from absl import app, flags

# Before the imports that may load TensorFlow: it sets up what the terminal shows of it.
from trainer.common import terminal  # isort: split

from launch.kubernetes_lib import TrainingJob
from launch.slurm_lib import SlurmJob
from launch.sweep_plan import plan_sweep, sweep_from_plan, write_plan
from launch.trainer_args import LaunchError

ENGINES = ("local", "slurm", "kubernetes")
_SLURM = SlurmJob()
_KUBERNETES = TrainingJob(image="", claim="")

flags.DEFINE_enum(
    "engine",
    "local",
    ENGINES,
    "What runs the sweep's trainers: local processes, a Slurm job array, or a Kubernetes "
    "Indexed Job.",
)
flags.DEFINE_multi_string(
    "grid",
    [],
    "A swept trainer flag and its values, <flag>=<value>,<value>,...; repeat for more flags.",
)
flags.DEFINE_string(
    "search", None, "A search space, AlgoPerf's tuning_search_space.json format, of trainer flags."
)
flags.DEFINE_integer("trials", None, "Quasirandom points of --search to run.")
flags.DEFINE_integer("search_seed", 0, "Seed of --search's scrambled Halton sequence.")
flags.DEFINE_integer("seeds", None, "Run every point on --seed=0 to N-1.")
flags.DEFINE_string(
    "sweep_dir",
    None,
    "Directory of the sweep: the trainers' --logdir; with --engine=kubernetes, relative to "
    "the root of --claim.",
)
flags.DEFINE_string(
    "base_flagfile", None, "Trainer flagfile every run starts from; the grid's values override it."
)
flags.DEFINE_integer("parallel", 1, "Runs at once.")
flags.register_validator("parallel", lambda n: n >= 1, "must be at least 1")
flags.DEFINE_bool(
    "status", False, "Print the table of the sweep in --sweep_dir, whichever engine runs it."
)
flags.DEFINE_string("name", "mlp-sweep", "The Slurm array's or the Kubernetes Job's name.")
# --engine=slurm: each array task's resources, as launch.slurm's.
flags.DEFINE_integer("nodes", _SLURM.nodes, "Slurm: nodes of each run.")
flags.DEFINE_integer(
    "tasks_per_node", _SLURM.tasks_per_node, "Slurm: trainer processes per node of each run."
)
flags.DEFINE_integer("gpus_per_node", _SLURM.gpus_per_node, "Slurm: GPUs per node of each run.")
flags.DEFINE_integer("cpus_per_task", _SLURM.cpus_per_task, "Slurm: CPUs per task; 0: default.")
flags.DEFINE_string("time", _SLURM.time, "Slurm: time limit of each run; empty: the partition's.")
flags.DEFINE_string("partition", _SLURM.partition, "Slurm: partition; empty: the default one.")
flags.DEFINE_integer(
    "signal_seconds",
    _SLURM.signal_seconds,
    "Slurm: SIGTERM this long before the time limit; the task then requeues itself.",
)
flags.DEFINE_string("python", _SLURM.python, "Slurm: the trainers' Python, on every node.")
flags.DEFINE_string("script", "", "Slurm: write the batch script to this file, not stdout.")
flags.DEFINE_bool("submit", False, "Slurm: submit the array with sbatch and print its job id.")
# --engine=kubernetes, as launch.kubernetes's.
flags.DEFINE_string("image", _KUBERNETES.image, "Kubernetes: the image `make image` builds.")
flags.DEFINE_string("claim", _KUBERNETES.claim, "Kubernetes: the claim the runs are on.")
flags.DEFINE_integer(
    "gpus_per_worker", _KUBERNETES.gpus_per_worker, "Kubernetes: GPUs of each run's pod."
)
flags.DEFINE_string("namespace", _KUBERNETES.namespace, "Kubernetes: namespace; empty: current.")
flags.DEFINE_bool(
    "tensorboard", _KUBERNETES.tensorboard, "Kubernetes: also TensorBoard over the claim."
)

FLAGS = flags.FLAGS


def main(argv):
    try:
        if FLAGS.status:
            if not FLAGS.sweep_dir:
                raise LaunchError("--status: needs --sweep_dir, the sweep's directory")
            show_status(sweep_from_plan(FLAGS.sweep_dir))
        for flag in ("submit", "script"):
            if FLAGS[flag].present and FLAGS.engine != "slurm":
                raise LaunchError(f"--{flag}: only with --engine=slurm")
        {"local": run_locally, "slurm": run_on_slurm, "kubernetes": print_manifests}[FLAGS.engine](
            argv[1:]
        )
    except LaunchError as e:
        # One line naming the flag; nothing written.
        terminal.exit_with_error(e)


def from_flags(job_class, **fields):
    """A launcher's job (SlurmJob, TrainingJob) from the flags named as its fields, and `fields`."""
    names = {field.name for field in dataclasses.fields(job_class)} - set(fields) - {"trainer_args"}
    return job_class(**{name: FLAGS[name].value for name in names if name in FLAGS}, **fields)


def planned(trainer_args: list[str], sweep_dir: str | None = None):
    return plan_sweep(
        FLAGS.grid,
        sweep_dir or FLAGS.sweep_dir,
        FLAGS.base_flagfile,
        trainer_args,
        search=FLAGS.search,
        trials=FLAGS.trials,
        search_seed=FLAGS.search_seed,
        seeds=FLAGS.seeds,
    )


def show_status(sweep) -> None:
    # TensorFlow (reading result.json's module) loads only for a sweep that is there.
    terminal.load_tensorflow()
    from launch.sweep_report import exit_code, format_table
    from launch.sweep_status import sweep_status

    reports = sweep_status(sweep)
    print(format_table(sweep, reports))
    sys.exit(exit_code(reports))


def run_locally(trainer_args: list[str]) -> None:
    sweep = planned(trainer_args)
    write_plan(sweep)
    # TensorFlow (for the HParams summaries) loads only for a sweep that can run.
    terminal.load_tensorflow()
    from launch.sweep_lib import run_sweep
    from launch.sweep_report import exit_code, format_table

    reports = run_sweep(sweep, FLAGS.parallel)
    print(format_table(sweep, reports))
    sys.exit(exit_code(reports))


def run_on_slurm(trainer_args: list[str]) -> None:
    from launch.slurm_lib import submit
    from launch.sweep_slurm import ARRAY_OUTPUT, check_runs_fit, sweep_script

    sweep = planned(trainer_args)
    job = from_flags(
        SlurmJob, output=os.path.join(sweep.sweep_dir, ARRAY_OUTPUT)
    ).validate_resources()
    check_runs_fit(sweep, job)
    if FLAGS.submit and shutil.which("sbatch") is None:
        raise LaunchError("--submit: sbatch not found; is this a Slurm login node?")
    write_plan(sweep)  # What the array's tasks read.
    terminal.load_tensorflow()
    from launch.sweep_lib import write_hparams
    from launch.sweep_status import unfinished

    write_hparams(sweep.sweep_dir, sweep.plan())
    indices = unfinished(sweep)
    if not indices:
        print("launch.sweep: every run is finished or running; nothing to submit", file=sys.stderr)
        show_status(sweep)
    script = sweep_script(sweep, job, indices, FLAGS.parallel)
    if FLAGS.script:
        try:
            with open(FLAGS.script, "w") as f:
                f.write(script)
        except OSError as e:
            raise LaunchError(f"--script={FLAGS.script}: {e.strerror}") from None
    elif not FLAGS.submit:
        sys.stdout.write(script)
    if FLAGS.submit:
        job_id = submit(script)
        print(job_id)
        print(
            f"launch.sweep: {len(indices)} of {len(sweep.runs)} runs submitted as job array "
            f"{job_id}, {FLAGS.parallel} at once; python -m launch.sweep --status "
            f"--sweep_dir={sweep.sweep_dir} shows where they stand",
            file=sys.stderr,
        )


def print_manifests(trainer_args: list[str]) -> None:
    from launch.kubernetes_lib import to_yaml
    from launch.sweep_kubernetes import sweep_dir_on_claim, sweep_manifests

    sweep_dir = FLAGS.sweep_dir or ""
    if sweep_dir and (os.path.isabs(sweep_dir) or ".." in sweep_dir.split(os.sep)):
        raise LaunchError(
            f"--sweep_dir={sweep_dir}: with --engine=kubernetes, a directory on --claim, "
            "relative to its root"
        )
    if FLAGS.base_flagfile:
        raise LaunchError(
            f"--base_flagfile={FLAGS.base_flagfile}: not with --engine=kubernetes, whose pods "
            "do not see this machine's files; give its flags after --"
        )
    sweep = planned(trainer_args, sweep_dir_on_claim(sweep_dir) if sweep_dir else None)
    # One pod a run, as an Indexed Job's.
    job = from_flags(TrainingJob, workers=1, engine="indexed-job")
    sys.stdout.write(to_yaml(sweep_manifests(sweep, job, FLAGS.parallel)))


if __name__ == "__main__":
    app.run(main)
