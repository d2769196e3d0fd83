"""The run's data as the strategy feeds it: training batches from any step, and eval sets.

Each replica gets its share of every global batch (`experimental_distribute_dataset`). The order
of training batches is a pure function of (seed, epoch), so batches from a step are exactly what
an uninterrupted run sees from there: resuming needs the step and nothing else.
"""

import tensorflow as tf

from data import mnist
from trainer.common import exiting
from trainer.config import ConfigError, check_batch_split

EVAL_SPLITS = ("validation", "test")


class Inputs:
    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        data: mnist.Mnist,
        batch_size: int,
        seed: int,
        grad_accum_steps: int = 1,
    ):
        replicas = strategy.num_replicas_in_sync
        check_batch_split(batch_size, replicas, grad_accum_steps)
        self.steps_per_epoch = len(data.train) // batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"--batch_size={batch_size}: larger than the {len(data.train)} training examples"
            )
        self.strategy, self.data, self.batch_size, self.seed = strategy, data, batch_size, seed
        # Padded to whole batches (mnist.eval_dataset), so every example counts exactly once.
        self.eval_batches = {
            name: -(-len(getattr(data, name)) // batch_size) for name in EVAL_SPLITS
        }
        self.eval_sets = {
            name: strategy.experimental_distribute_dataset(
                mnist.eval_dataset(getattr(data, name), batch_size)
            )
            for name in EVAL_SPLITS
        }

    def train_batches(self, step: int = 0):
        """An iterator over the distributed training batches from global step `step` on.

        Deleting it can take a minute (trainer/common/exiting.py): in a process that ends with
        exiting.leave, it is never deleted.
        """
        epoch, done = divmod(step, self.steps_per_epoch)
        dataset = mnist.train_dataset(
            self.data.train, self.batch_size, self.seed, first_epoch=epoch, skip_batches=done
        )
        return exiting.keep_until_exit(iter(self.strategy.experimental_distribute_dataset(dataset)))

    def eval_set(self, name: str) -> tuple[tf.distribute.DistributedDataset, int]:
        """(dataset, number of batches) of an eval split: `validation` or `test`."""
        return self.eval_sets[name], self.eval_batches[name]
