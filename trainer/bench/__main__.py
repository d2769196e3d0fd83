"""Benchmarks, printed as one table: `make bench`, or

    python -m trainer.bench                                   # every section
    python -m trainer.bench --sections=convergence --json=bench.json
    python -m trainer.bench --sections=throughput,distribution,ceiling,profile   # the quick ones
    python -m trainer.bench --sections=profile_keras # ours and Keras's XLA fit, side by side
    python -m trainer.bench --sections=optimizers    # each optimizer's sweep and seeds: ~1 h
    python -m trainer.bench --sections=accumulation  # memory with --grad_accum_steps 1 and 8
    python -m trainer.bench --sections=sam           # Adam and Adam+SAM, clean and noisy labels
    python -m trainer.bench --sections=one_program   # the step as one XLA program, or in pieces
    python -m trainer.bench --sections=time_to_target --time_to_target_optimizers=adam,nadamw
                                                     # AlgoPerf's tuning and targets: ~6 min each

Each section is a function returning {measure: value}; add one to SECTIONS to extend the table.
`memory` comes last so that its peak covers every section run before it. Stdout opens with the
machine's line (trainer/common/machine.py) and ends with the table; meanwhile log lines on
stderr say which section and which round of its measurement is under way. The JSON file holds
the date, the git commit, the machine's record and the measurements: {"date", "git_commit",
"machine", "measurements": {section: {measure: value}}}.
"""

import datetime
import json
import os
import time

# Before the imports that load TensorFlow: what the terminal shows of it, and TensorFlow.
from trainer.common import terminal  # isort: split

from trainer.common import quiet_tensorflow  # noqa: F401

# isort: split

from absl import app, flags, logging

from trainer.bench import accumulation as bench_accumulation
from trainer.bench import convergence as bench_convergence
from trainer.bench import keras_profile, step_profile
from trainer.bench import one_program as bench_one_program
from trainer.bench import optimizers as bench_optimizers
from trainer.bench import precision as bench_precision
from trainer.bench import time_to_target as bench_time_to_target
from trainer.bench import training as bench_training
from trainer.choices import OPTIMIZERS
from trainer.common import ctrl_c
from trainer.common import machine as machine_description
from trainer.common.exiting import exit_promptly
from trainer.common.tables import markdown_table
from trainer.distribution import strategies
from trainer.run.files import git_commit

SECTIONS = {
    "convergence": bench_convergence.run,
    "throughput": bench_training.throughput,
    "distribution": bench_training.distribution,
    "ceiling": bench_training.ceiling,
    "profile": step_profile.step_time_breakdown,
    "profile_keras": keras_profile.keras_beside_ours,
    "one_program": bench_one_program.one_program,
    "time_to_accuracy": bench_training.time_to_accuracy,
    "precision_throughput": bench_precision.throughput,
    "precision_bfloat16": bench_precision.bfloat16,
    "precision_ceiling": bench_precision.ceiling,
    "precision_accuracy": bench_precision.accuracy,
    "precision_allreduce": bench_precision.allreduce,
    "optimizers": bench_optimizers.optimizers,
    "sam": bench_optimizers.sam,
    "accumulation": bench_accumulation.memory_and_speed,
    # Flags are read when the section runs, after absl has parsed them.
    "time_to_target": lambda: bench_time_to_target.time_to_target(
        FLAGS.time_to_target_optimizers, FLAGS.time_to_target_plot
    ),
    "memory": bench_training.memory,
}

flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, of: {', '.join(SECTIONS)}.")
flags.DEFINE_list(
    "time_to_target_optimizers",
    list(OPTIMIZERS),
    "Section time_to_target: the optimizers to tune and time, of: " + ", ".join(OPTIMIZERS),
)
flags.DEFINE_string(
    "time_to_target_plot",
    "time_to_target.png",
    "Section time_to_target: the PNG to draw the performance profile to; empty: none.",
)
flags.DEFINE_string(
    "json", None, "If set, also write the machine and the measurements to this new JSON file."
)

FLAGS = flags.FLAGS

flags.register_validator(
    "sections",
    lambda names: bool(names) and set(names) <= set(SECTIONS),
    f"must name sections of: {', '.join(SECTIONS)}",
)
flags.register_validator(
    "time_to_target_optimizers",
    lambda names: bool(names) and set(names) <= set(OPTIMIZERS),
    f"must name optimizers of: {', '.join(OPTIMIZERS)}",
)
flags.register_validator(
    "json",
    lambda path: not path or not os.path.exists(path),
    "already exists; remove it or choose another path",
)


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv):
    terminal.refuse_arguments(argv)
    # Before any TensorFlow work: the distribution section's replicas are logical CPUs.
    strategies.split_cpu(bench_training.CPU_REPLICAS)
    # As the run starts: the code it runs is what was checked out then.
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    commit = git_commit()
    machine = machine_description.describe()
    print(f"machine: {machine.line()}", flush=True)
    measurements = {}
    with ctrl_c.ends_at_once():  # Even inside a long compiled measurement.
        for index, name in enumerate(FLAGS.sections, 1):
            # Progress on stderr (the sections and measure() log their own); the table on stdout.
            logging.info("[%s] section %d/%d", name, index, len(FLAGS.sections))
            start = time.monotonic()
            measurements[name] = SECTIONS[name]()
            logging.info("[%s] done in %.0f s", name, time.monotonic() - start)
    print(
        markdown_table(
            ["section", "measure", "value"],
            [
                [section, measure, _format(value)]
                for section, values in measurements.items()
                for measure, value in values.items()
            ],
        )
    )
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(
                {
                    "date": started,
                    "git_commit": commit,
                    "machine": machine.record(),
                    "measurements": measurements,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    # As the trainer: deleting Keras's and tf.distribute's tf.data iterators at teardown waits
    # for their autotuning threads, a minute or more after the table and the JSON are out.
    app.run(exit_promptly(main))
