"""Runs the seed notebook's optimizer convergence test, compiled, and prints its table.

    python -m trainer.convergence                      # 15 runs: ~1 s + start-up
    python -m trainer.convergence --json=results.json  # also each run's outcome as JSON
    python -m trainer.convergence --init_val=-0.5 --learning_rates=0.01,0.1 --logdir=runs/c2

Expect, with the defaults (the first three rows are the notebook's published table; AdamW and
Lion, which it does not have, run with the settings suite.OPTIMIZER_SETTINGS gives them):

| optimizer        | lr 0.001      | lr 0.01                    | lr 0.1                       |
|------------------|---------------|----------------------------|------------------------------|
| gradient descent | exceeded 2000 | exceeded 2000              | exploded at iteration 6      |
| momentum         | exceeded 2000 | converged in 80 iterations | exploded at iteration 6      |
| Adam             | exceeded 2000 | exceeded 2000              | converged in 1156 iterations |
| AdamW            | exceeded 2000 | exceeded 2000              | exceeded 2000                |
| Lion             | exceeded 2000 | exceeded 2000              | exceeded 2000                |

TensorBoard (--logdir): x and the loss per iteration under <logdir>/<optimizer>@<lr>/, the
pictures (also PNG files in <logdir>) and the table. Rerunning the same settings into a logdir
adds new event files beside the old ones (TensorBoard reads them all) and rewrites the same
pictures; a logdir that holds other settings is refused, as is an existing --json file.
"""

import json
import math
import os

import numpy as np
from absl import app, flags

from trainer.choices import OPTIMIZERS
from trainer.common import ctrl_c, terminal
from trainer.convergence.settings import LogdirError, SuiteSettings, check_logdir

_DEFAULTS = SuiteSettings()


class _FloatListParser(flags.ListParser):
    """Comma-separated floats; a bad number fails at parsing, naming the flag."""

    def parse(self, argument):
        return [float(value) for value in super().parse(argument)]


flags.DEFINE_list(
    "optimizers", list(_DEFAULTS.optimizers), f"Optimizers to test, of: {', '.join(OPTIMIZERS)}."
)
flags.DEFINE(
    _FloatListParser(),
    "learning_rates",
    list(_DEFAULTS.learning_rates),
    "Learning rates each optimizer runs with.",
    serializer=flags.CsvListSerializer(","),
)
flags.DEFINE_float("init_val", _DEFAULTS.init_val, "Where x starts in every run.")
flags.DEFINE_integer("max_iters", _DEFAULTS.max_iters, "Iterations before a run has 'exceeded'.")
flags.DEFINE_string("logdir", "runs/convergence", "TensorBoard directory for events and PNGs.")
flags.DEFINE_string("json", None, "If set, write each run's outcome to this new JSON file.")

FLAGS = flags.FLAGS


# x and the learning rates are float32 in the runs: there 1e39 is inf and 1e-46 is 0.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINIEST = float(np.finfo(np.float32).smallest_subnormal)


def _fits_float32(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= _FLOAT32_MAX


def _distinct(values) -> bool:
    return len(set(values)) == len(values)


flags.register_validator(
    "optimizers",
    lambda names: bool(names) and set(names) <= set(OPTIMIZERS) and _distinct(names),
    f"must be distinct names of: {', '.join(OPTIMIZERS)}",
)
flags.register_validator(
    "learning_rates",
    lambda rates: (
        bool(rates)
        and _distinct([f"{lr:g}" for lr in rates])
        and all(_fits_float32(lr) and lr >= _FLOAT32_TINIEST for lr in rates)
    ),
    "must be distinct positive float32 numbers (distinct in %g form, which names their runs)",
)
flags.register_validator("init_val", _fits_float32, "must be a finite float32 number")
flags.register_validator("max_iters", lambda n: n >= 1, "must be at least 1")
flags.register_validator(
    "json",
    lambda path: not path or not os.path.exists(path),
    "already exists; remove it or choose another path",
)


def main(argv):
    terminal.refuse_arguments(argv)
    settings = SuiteSettings(
        optimizers=tuple(FLAGS.optimizers),
        learning_rates=tuple(FLAGS.learning_rates),
        init_val=FLAGS.init_val,
        max_iters=FLAGS.max_iters,
    )
    try:
        # A logdir holding other settings: one line naming the flag, nothing written over.
        check_logdir(FLAGS.logdir, settings)
    except LogdirError as e:
        terminal.exit_with_error(e)
    # Every refusal is made by now, before TensorFlow loads.
    terminal.load_tensorflow()
    from trainer.convergence.suite import format_table, results_json, run_and_report

    with ctrl_c.ends_at_once():  # Even inside the suite's one compiled loop.
        results = run_and_report(settings, FLAGS.logdir)
    print(format_table(results))
    print(f"TensorBoard: {terminal.tensorboard_command(FLAGS.logdir)}")
    if FLAGS.json:
        os.makedirs(os.path.dirname(FLAGS.json) or ".", exist_ok=True)
        with open(FLAGS.json, "w") as f:
            json.dump(results_json(results), f, indent=2)


if __name__ == "__main__":
    app.run(main)
