"""Trains the Core-API MLP on MNIST under a tf.distribute strategy.

    python -m trainer.train                                   # defaults: Adam, cosine, 10 epochs
    python -m trainer.train --cpu_replicas=2 --epochs=2       # MirroredStrategy on 2 CPU devices
    python -m trainer.train --flagfile=runs/<run>/flags.txt   # rerun (or resume) a run

Logs to TensorBoard under --logdir/<run name>; rerunning with the same settings resumes from
the latest checkpoint there.
"""

import dataclasses
import sys

# Before the imports that load TensorFlow: it sets up what the terminal shows of it.
import trainer.terminal

from absl import app, flags, logging

from data.mnist import SOURCES, DataError
from trainer.config import PRECISIONS, ConfigError, TrainConfig
from trainer.distribute import STRATEGIES, StrategyError
from trainer.optimizers import OPTIMIZERS, SCHEDULES
from trainer.checkpointing import CheckpointError
from trainer.preemption import PREEMPTED_EXIT_CODE, Preempted
from trainer.train_lib import DivergenceError, train_and_evaluate

_DEFAULTS = TrainConfig()

flags.DEFINE_string("logdir", _DEFAULTS.logdir, "Parent directory of all runs.")
flags.DEFINE_string("run_name", _DEFAULTS.run_name,
                    "Run directory under --logdir; empty derives it from the hyperparameters.")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, STRATEGIES,
                  "auto: MirroredStrategy over every GPU, or over --cpu_replicas CPU devices "
                  "when more than one, else a single device.")
flags.DEFINE_integer("cpu_replicas", _DEFAULTS.cpu_replicas,
                     "Split the CPU into this many logical devices (machines without GPUs).")
flags.DEFINE_enum("optimizer", _DEFAULTS.optimizer, list(OPTIMIZERS), "Optimizer.")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Peak learning rate.")
flags.DEFINE_enum("lr_schedule", _DEFAULTS.lr_schedule, SCHEDULES,
                  "constant, or cosine decay to 0 over the run.")
flags.DEFINE_float("warmup_epochs", _DEFAULTS.warmup_epochs,
                   "Linear warm-up before the cosine decay, in epochs.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size,
                     "Global batch size, split evenly across replicas.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Passes over the 50,000 training images.")
flags.DEFINE_list("hidden_sizes", list(map(str, _DEFAULTS.hidden_sizes)),
                  "Widths of the hidden layers.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seeds weights and data order.")
flags.DEFINE_integer("steps_per_loop", _DEFAULTS.steps_per_loop,
                     "Train steps per call of the compiled loop (and per logged point).")
flags.DEFINE_enum("data_source", _DEFAULTS.data_source, SOURCES,
                  "auto: TFDS if MNIST is prepared in --data_dir, else the bundled copy.")
flags.DEFINE_string("data_dir", _DEFAULTS.data_dir, "TFDS data directory (TFDS default if unset).")
flags.DEFINE_integer("max_checkpoints", _DEFAULTS.max_checkpoints, "Checkpoints kept.")
flags.DEFINE_integer("checkpoint_every_steps", _DEFAULTS.checkpoint_every_steps,
                     "Also checkpoint every this many steps; 0: at epoch ends only.")
flags.DEFINE_bool("deterministic", _DEFAULTS.deterministic,
                  "Turn on TensorFlow op determinism: a rerun, or a killed and resumed run, "
                  "gives bit-for-bit the same weights (slower on GPUs).")
flags.DEFINE_bool("xla_update", _DEFAULTS.xla_update,
                  "Compile each variable's optimizer update with XLA into one fused pass "
                  "(faster); --noxla_update runs it op by op, e.g. where XLA cannot compile "
                  "for the device.")
flags.DEFINE_enum("precision", _DEFAULTS.precision, PRECISIONS,
                  "float32; or mixed precision (Keras's policy names): float32 weights and "
                  "optimizer state, forward and backward passes in bfloat16 or float16 "
                  "(float16 with dynamic loss scaling).")
flags.DEFINE_bool("jit_compile", _DEFAULTS.jit_compile,
                  "Compile each replica's forward and backward pass with XLA, as Keras's "
                  "jit_compile does (pays on GPUs; slower on this project's CPU, see README).")
flags.DEFINE_integer("nonfinite_retries", _DEFAULTS.nonfinite_retries,
                     "On a NaN/inf loss or gradient, restore the last good checkpoint and go on, "
                     "up to this many times; 0: stop with an error.")

flags.DEFINE_integer("histogram_every_steps", _DEFAULTS.histogram_every_steps,
                     "Histograms of weights and optimizer state every this many steps; "
                     "0: at epoch ends.")
flags.DEFINE_list("profile_steps", [],
                  "START,END: record a profiler trace of these steps (TensorBoard's Profile "
                  "tab); empty: no trace.")

FLAGS = flags.FLAGS


def _integers(flag: str, values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise ConfigError(f"--{flag}={','.join(values)}: must be comma-separated "
                          "integers") from None


def config_from_flags() -> TrainConfig:
    """Every TrainConfig field comes from the flag of the same name."""
    values = {field.name: FLAGS[field.name].value for field in dataclasses.fields(TrainConfig)}
    for name in ("hidden_sizes", "profile_steps"):
        values[name] = _integers(name, values[name])
    if not FLAGS["warmup_epochs"].present and values["warmup_epochs"] >= values["epochs"]:
        # A short run with the default warm-up: warm up for a tenth of it. A warm-up the user
        # set that is not shorter than the run stays an error (TrainConfig.validate).
        values["warmup_epochs"] = values["epochs"] / 10
        logging.info("--warmup_epochs: the default %g epoch(s) is not shorter than --epochs=%d; "
                     "warming up for %g instead", _DEFAULTS.warmup_epochs, values["epochs"],
                     values["warmup_epochs"])
    return TrainConfig(**values)


def main(argv):
    trainer.terminal.refuse_arguments(argv, "trainer.train")
    try:
        result = train_and_evaluate(config_from_flags().validate())
    except (ConfigError, StrategyError, DataError, CheckpointError, DivergenceError) as e:
        # One line naming the flag, file or step; non-zero exit; nothing written over.
        sys.exit(f"trainer.train: error: {e}")
    except Preempted as e:
        logging.warning("%s", e)
        sys.exit(PREEMPTED_EXIT_CODE)
    print(f"test accuracy: {result.test_accuracy:.4f} (loss {result.test_loss:.4f}) "
          f"after {result.steps} steps; run directory {result.run_dir}")


if __name__ == "__main__":
    app.run(main)
