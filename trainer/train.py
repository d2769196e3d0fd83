"""Trains the Core-API MLP on MNIST under a tf.distribute strategy.

    python -m trainer.train                                   # defaults: Adam, cosine, 10 epochs
    python -m trainer.train --cpu_replicas=2 --epochs=2       # MirroredStrategy on 2 CPU devices
    python -m trainer.train --flagfile=runs/<run>/flags.txt   # rerun (or resume) a run

Logs to TensorBoard under --logdir/<run name>; rerunning with the same settings resumes from
the latest checkpoint there.
"""

import sys

# Before the imports that may load TensorFlow: it sets up what the terminal shows of it.
from trainer.common import terminal  # isort: split

from absl import app, flags, logging

from trainer import flags as trainer_flags
from trainer.common.errors import OneLineError
from trainer.common.exit_codes import PREEMPTED_EXIT_CODE
from trainer.common.exiting import exit_promptly

FLAGS = flags.FLAGS
trainer_flags.define_flags(FLAGS)
# --helpshort lists the main module's flags: these are the trainer's, defined elsewhere.
flags.adopt_module_key_flags(trainer_flags)


def main(argv):
    terminal.refuse_arguments(argv)
    try:
        config = trainer_flags.config_from_flags(FLAGS).validate()
    except OneLineError as e:  # Refused before TensorFlow loads: the line comes at once.
        terminal.exit_with_error(e)
    train(config)


def train(config):
    """Trains the checked config and prints its test score; a failure the user can act on is
    one line and a non-zero exit."""
    terminal.load_tensorflow()  # Only now: the flags were checked without it.
    import tensorflow as tf

    from data.mnist import DataError
    from trainer.loop.preemption import Preempted
    from trainer.recipe import train_and_evaluate
    from trainer.run.directory import RunFinished

    try:
        result = train_and_evaluate(config)
    except (OneLineError, DataError) as e:  # data/ stands alone, below the trainer.
        # One line naming the flag, file or step; non-zero exit; nothing written over.
        terminal.exit_with_error(e)
    except RunFinished as e:
        print(f"trainer.train: {e}")  # Not an error: the run is there, finished.
        return
    except Preempted as e:  # SIGTERM (143) or Ctrl-C (130), with a checkpoint saved.
        logging.warning("%s", e)
        sys.exit(e.exit_code)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as e:
        # Another task of a multi-worker job died (killed, out of memory, node lost) or came
        # back as a new process: this one's collectives fail. TensorFlow's own coordinator takes
        # these two errors, naming a task, for a worker failure. Not this worker's fault, so it
        # exits as a preempted one does, for the scheduler to restart the job from its
        # checkpoints rather than fail it as it would on exit 1 (launch/kubernetes_lib.py).
        if "/job:" not in e.message:
            raise
        logging.warning(
            "a worker of the job was lost; stopping: %s; rerun the same command "
            "to resume from the latest checkpoint",
            " ".join(e.message.split()),
        )
        sys.exit(PREEMPTED_EXIT_CODE)
    print(
        f"test accuracy: {result.test_accuracy:.4f} (loss {result.test_loss:.4f}) "
        f"after {result.steps} steps; run directory {result.run_dir}"
    )


if __name__ == "__main__":
    app.run(exit_promptly(main))  # Ends once its files are written, not after TF's teardown.
