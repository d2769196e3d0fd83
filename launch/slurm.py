"""Writes the Slurm batch script of a multi-worker run; with --submit, submits it with sbatch.

    python -m launch.slurm --nodes=2 --tasks_per_node=4 --gpus_per_node=4 --time=4:00:00 \\
        --submit -- --epochs=20 --batch_size=1024 --logdir=/shared/runs

Each of the --nodes x --tasks_per_node Slurm tasks runs `python -m trainer.train
--strategy=multi_worker <flags after -->` from this checkout (on a filesystem every node
shares); the trainers find each other from Slurm's environment. SIGTERM comes --signal_seconds
before the time limit; a trainer preempted so exits 143 after its checkpoint and the script
requeues the job, which resumes. The script goes to stdout, or to --script; --submit also
prints the job id. Bad input is one line `launch.slurm: error: ...`, before anything is
written or submitted.
"""

import sys

# Before the imports that load TensorFlow (checking trainer flags does): it sets up what the
# terminal shows of it.
from trainer.common import terminal  # isort: split

from absl import app, flags

from launch.slurm_lib import SlurmJob, batch_script, submit
from launch.trainer_args import LaunchError

_DEFAULTS = SlurmJob()

flags.DEFINE_string("name", _DEFAULTS.name, "The job's name (sbatch --job-name).")
flags.DEFINE_integer("nodes", _DEFAULTS.nodes, "Nodes of the job.")
flags.DEFINE_integer(
    "tasks_per_node", _DEFAULTS.tasks_per_node, "Trainer processes per node (Slurm tasks)."
)
flags.DEFINE_integer(
    "gpus_per_node",
    _DEFAULTS.gpus_per_node,
    "GPUs per node (--gres=gpu:N), shared equally by its tasks; 0: CPU only.",
)
flags.DEFINE_integer(
    "cpus_per_task", _DEFAULTS.cpus_per_task, "CPUs per task; 0: the cluster's default."
)
flags.DEFINE_string(
    "time", _DEFAULTS.time, "Time limit (sbatch --time, e.g. 4:00:00); empty: the partition's."
)
flags.DEFINE_string("partition", _DEFAULTS.partition, "Partition; empty: the default one.")
flags.DEFINE_integer(
    "signal_seconds",
    _DEFAULTS.signal_seconds,
    "SIGTERM to the trainers this many seconds before the time limit, for "
    "their checkpoint; the script then requeues the job.",
)
flags.DEFINE_string(
    "output",
    _DEFAULTS.output,
    "The job's output file (sbatch --output; %x: name, %j: job id), relative "
    "to this checkout; each attempt appends to it.",
)
flags.DEFINE_string(
    "python",
    _DEFAULTS.python,
    "The Python interpreter of the trainers, at this path on every node.",
)
flags.DEFINE_string("script", "", "Write the batch script to this file instead of stdout.")
flags.DEFINE_bool("submit", False, "Submit the script with sbatch and print the job id.")

FLAGS = flags.FLAGS


def main(argv):
    job = SlurmJob(
        name=FLAGS.name,
        nodes=FLAGS.nodes,
        tasks_per_node=FLAGS.tasks_per_node,
        gpus_per_node=FLAGS.gpus_per_node,
        cpus_per_task=FLAGS.cpus_per_task,
        time=FLAGS.time,
        partition=FLAGS.partition,
        signal_seconds=FLAGS.signal_seconds,
        output=FLAGS.output,
        python=FLAGS.python,
        trainer_args=tuple(argv[1:]),
    )
    try:
        script = batch_script(job)
        if FLAGS.script:
            with open(FLAGS.script, "w") as f:
                f.write(script)
        elif not FLAGS.submit:
            sys.stdout.write(script)
        if FLAGS.submit:
            print(submit(script))
    except LaunchError as e:
        terminal.exit_with_error(e)
    except OSError as e:
        terminal.exit_with_error(f"--script={FLAGS.script}: {e.strerror}")


if __name__ == "__main__":
    app.run(main)
