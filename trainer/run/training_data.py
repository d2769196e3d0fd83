"""The run's data: the same MNIST on every worker, and across a run's resumptions.

The two sources hold the same 70,000 images in different orders (TFDS stores MNIST shuffled),
so they cut different validation sets off the training images. Rather than reorder one to
match the other, a run records what it trained on, the source and a fingerprint of the arrays
(`record`, kept in the run's data.json), and refuses to resume on anything else; that also
catches a data_dir whose TFDS copy changed. `auto` resumes on the source the run started with,
and every worker checks at start that it holds what the chief holds.
"""

import tensorflow as tf
from absl import logging

from data import mnist
from data.label_noise import with_label_noise
from data.mnist import DataError
from trainer.config import TrainConfig
from trainer.distribution import workers
from trainer.run import files


def load(config: TrainConfig, strategy: tf.distribute.Strategy, run_dir: str) -> mnist.Mnist:
    """The data config asks for (with --label_noise, its training labels flipped), checked
    against the run's record (if it has one) and against the chief's: a collective, so every
    worker calls it at the same point."""
    recorded = files.read_data(run_dir)
    source = config.data_source
    if source == "auto" and recorded:
        source = recorded["source"]
        logging.info(
            "data_source=auto: the run in %s trained on %s MNIST; resuming on it", run_dir, source
        )
    data = with_label_noise(mnist.load(source, config.data_dir), config.label_noise, config.seed)
    if recorded and recorded["fingerprint"] != data.fingerprint:
        raise DataError(
            f"--data_source={config.data_source}: the run in {run_dir} trained on "
            f"{recorded['source']} MNIST (fingerprint {recorded['fingerprint']}), this is "
            f"{data.source} MNIST ({data.fingerprint}); resume on the data it started with "
            "(its validation images would be trained on), or choose another --run_name"
        )
    _check_same_on_every_worker(strategy, data)
    return data


def _check_same_on_every_worker(strategy: tf.distribute.Strategy, data: mnist.Mnist) -> None:
    # 60 bits of the fingerprint tell arrays apart as well as a person reading it would.
    held = workers.gather_from_workers(
        strategy, (int(workers.is_chief(strategy)), int(data.fingerprint[:15], 16))
    )
    chief = next(fingerprint for is_chief, fingerprint in held.values() if is_chief)
    others = sorted(task for task, (_, fingerprint) in held.items() if fingerprint != chief)
    if others:
        raise DataError(
            f"{', '.join(others)} hold(s) other MNIST than the chief (here, "
            f"{workers.task_name(strategy)}: --data_source={data.source}, fingerprint "
            f"{data.fingerprint}); give every worker the same --data_source and --data_dir"
        )


def record(data: mnist.Mnist) -> dict:
    """What data.json holds of `data`."""
    return {"source": data.source, "fingerprint": data.fingerprint}
