"""The compiled inner loop: a training step and an evaluation step, run through a strategy.

`compile_loop` turns a per-replica step into a `tf.function` of (iterator, num_steps).
`num_steps` is a tensor, so any count reuses one trace; running many steps per call keeps
Python out of the hot loop.

How much of a step XLA compiles (`--jit_compile`, `--xla_update`) depends on the replicas:

- one replica in sync (one device, MirroredStrategy on one, a job of one worker): the whole
  step is one XLA program, as Keras's `jit_compile` fit has it: forward, backward, the
  micro-batch loop, SAM's passes, the metrics' sums and the optimizer's whole update (base.py's
  own code path: the sum across one replica is the identity, and its `merge_call` traces into
  the same program);
- several: XLA compiles each replica's forward and backward pass, and the optimizer each
  variable's update; the all-reduce and `merge_call` between them run op by op, since on CPUs
  `tf.distribute` reduces through `merge_call`, which a nested compiled function may not hold,
  and XLA compiles no program over the variables' copies on several devices.
"""

import tensorflow as tf

from trainer.optimizers import Optimizer
from trainer.step.metrics import ClassificationMetrics
from trainer.step.sam import sam_gradients


def per_example_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def make_train_step(
    model: tf.Module,
    optimizer: Optimizer,
    metrics: ClassificationMetrics,
    global_batch_size: int,
    jit_compile: bool = False,
    accumulation_steps: int = 1,
    sam_rho: float = 0.0,
    sam_mode: str = "global",
    one_program: bool = False,
):
    """Returns train_step(images, labels): one synchronous update, run on every replica.

    With `jit_compile`, XLA compiles the replica's forward and backward pass into one program;
    the sum across replicas and the update stay outside it (the optimizer compiles its update
    by itself). With `one_program` as well (see `fits_one_program`), XLA compiles the whole
    step into one program instead, the optimizer's update and the metrics' sums included.

    With `accumulation_steps` K > 1, each replica splits its batch into K micro-batches and
    sums their gradients one micro-batch at a time (a loop-carried sum in the replica, so only
    one micro-batch's activations are alive and nothing crosses devices), then applies the sum
    once: one all-reduce, one optimizer step. Every micro-batch's loss is a share of the mean
    over the global batch, so the sum is the global batch's gradient, up to rounding.

    With `sam_rho` > 0, the gradient applied is sharpness-aware minimization's (step/sam.py):
    two passes over the replica's batch, each accumulated over its K micro-batches, the first
    at w and the second at w + e; the metrics are the first pass's.
    """

    def gradients(images, labels, offsets=None):
        with tf.GradientTape() as tape:
            logits = model(images, offsets)
            losses = per_example_loss(labels, logits)
            # Mean over the *global* batch: summed across replicas, it is the batch mean.
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
            loss = optimizer.scale_loss(loss)  # Times the loss scale, with loss scaling.
        return tape.gradient(loss, model.trainable_variables), logits, losses

    if jit_compile and not one_program:
        gradients = tf.function(gradients, jit_compile=True)  # Not the metrics' update.

    def micro_batch_gradients(images, labels, offsets, measured):
        grads, logits, losses = gradients(images, labels, offsets)
        if measured:
            metrics.update(labels, logits, losses)
        return grads

    def batch_gradients(images, labels, offsets=None, measured=True):
        if accumulation_steps == 1:
            return micro_batch_gradients(images, labels, offsets, measured)
        micro_images = tf.reshape(images, [accumulation_steps, -1, *images.shape[1:]])
        micro_labels = tf.reshape(labels, [accumulation_steps, -1])
        summed = [tf.zeros_like(v) for v in model.trainable_variables]
        for i in tf.range(accumulation_steps):
            # One micro-batch at a time: that is the memory saved.
            tf.autograph.experimental.set_loop_options(parallel_iterations=1)
            grads = micro_batch_gradients(micro_images[i], micro_labels[i], offsets, measured)
            summed = [total + grad for total, grad in zip(summed, grads)]
        return summed

    def train_step(images, labels):
        if sam_rho:
            unscale = 1.0 / optimizer.loss_scale if optimizer.loss_scaling else None
            grads = sam_gradients(
                lambda offsets: batch_gradients(images, labels, offsets, offsets is None),
                sam_rho,
                sam_mode,
                unscale,
            )
        else:
            grads = batch_gradients(images, labels)
        optimizer.apply_gradients(grads, model.trainable_variables)

    if one_program:
        return tf.function(train_step, jit_compile=True)
    return train_step


def fits_one_program(strategy: tf.distribute.Strategy, jit_compile: bool, xla_update: bool) -> bool:
    """Whether XLA compiles the whole step into one program: with both `--jit_compile` and
    `--xla_update` (`--noxla_update` keeps the update out of XLA), on one replica in sync."""
    return jit_compile and xla_update and strategy.num_replicas_in_sync == 1


def make_eval_step(model: tf.Module, metrics: ClassificationMetrics):
    """Returns eval_step(images, labels, weights), accumulating weighted loss and accuracy."""

    def eval_step(images, labels, weights):
        logits = model(images)
        metrics.update(labels, logits, per_example_loss(labels, logits), weights)

    return eval_step


def compile_loop(strategy: tf.distribute.Strategy, step):
    """Returns a compiled loop(iterator, num_steps) running `step` on each replica's batch."""

    @tf.function
    def loop(iterator, num_steps):
        for _ in tf.range(num_steps):
            strategy.run(step, args=next(iterator))

    return loop
