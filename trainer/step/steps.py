"""The compiled inner loop: a training step and an evaluation step, run through a strategy.

`compile_loop` turns a per-replica step into a `tf.function` of (iterator, num_steps).
`num_steps` is a tensor, so any count reuses one trace; running many steps per call keeps
Python out of the hot loop.
"""

import tensorflow as tf

from trainer.optimizers import Optimizer
from trainer.step.metrics import ClassificationMetrics


def per_example_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def make_train_step(
    model: tf.Module,
    optimizer: Optimizer,
    metrics: ClassificationMetrics,
    global_batch_size: int,
    jit_compile: bool = False,
):
    """Returns train_step(images, labels): one synchronous update, run on every replica.

    With `jit_compile`, XLA compiles the replica's forward and backward pass into one program,
    as Keras's `jit_compile` does; the sum across replicas and the update stay outside it (the
    optimizer compiles its update by itself).
    """

    def gradients(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images)
            losses = per_example_loss(labels, logits)
            # Mean over the *global* batch: summed across replicas, it is the batch mean.
            loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch_size)
            loss = optimizer.scale_loss(loss)  # Times the loss scale, with loss scaling.
        return tape.gradient(loss, model.trainable_variables), logits, losses

    if jit_compile:
        gradients = tf.function(gradients, jit_compile=True)

    def train_step(images, labels):
        grads, logits, losses = gradients(images, labels)
        optimizer.apply_gradients(grads, model.trainable_variables)
        metrics.update(labels, logits, losses)

    return train_step


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
