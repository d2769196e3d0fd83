"""Sweeps a grid of trainer flags: one run of `python -m trainer.train` per combination.

    python -m launch.sweep --sweep_dir=runs/sweep1 --parallel=2 \\
        --grid=optimizer=adam,momentum --grid=learning_rate=1e-3,2e-3 \\
        -- --epochs=3 --data_source=bundled

Each --grid is `<trainer flag>=<value>,<value>,...` (a list flag's items joined by x:
`hidden_sizes=700x500,256`); the runs are every combination, named after their values, e.g.
runs/sweep1/optimizer=adam,learning_rate=0.001/. Flags after `--` go to every run, after those
of --base_flagfile (a run's flags.txt works). Each run's output is appended to
<run>/train.log. At the end a table lists every run's values, test accuracy and status.
Rerunning the same command skips the finished runs and resumes the others. TensorBoard's HParams
tab compares the runs: .venv/bin/tensorboard --logdir runs/sweep1.

SIGTERM or Ctrl-C (SIGINT) stops the sweep: no run starts after it, and the signal is passed on
to the running trainers, which checkpoint at their next step and exit; a second Ctrl-C stops
them at once. The exit code is 130 after Ctrl-C, as for launch.local and the trainer; otherwise
1 if any run failed, 143 after SIGTERM (preempted: the same command resumes), 0 if every run
finished.
"""

import sys

from absl import app, flags

# Before the imports that may load TensorFlow: it sets up what the terminal shows of it.
from trainer.common import terminal  # isort: split

from launch.sweep_plan import plan_sweep
from launch.trainer_args import LaunchError

flags.DEFINE_multi_string(
    "grid",
    [],
    "A swept trainer flag and its values, <flag>=<value>,<value>,...; repeat for more flags.",
)
flags.DEFINE_string("sweep_dir", None, "Directory of the sweep: the trainers' --logdir.")
flags.DEFINE_string(
    "base_flagfile", None, "Trainer flagfile every run starts from; the grid's values override it."
)
flags.DEFINE_integer("parallel", 1, "Runs at once.")
flags.register_validator("parallel", lambda n: n >= 1, "must be at least 1")

FLAGS = flags.FLAGS


def main(argv):
    try:
        sweep = plan_sweep(FLAGS.grid, FLAGS.sweep_dir, FLAGS.base_flagfile, argv[1:])
    except LaunchError as e:
        # One line naming the flag; nothing written.
        terminal.exit_with_error(e)
    # TensorFlow (for the HParams summaries) loads only for a sweep that can run.
    terminal.load_tensorflow()
    from launch.sweep_lib import exit_code, format_table, run_sweep

    reports = run_sweep(sweep, FLAGS.parallel)
    print(format_table(sweep, reports))
    sys.exit(exit_code(reports))


if __name__ == "__main__":
    app.run(main)
