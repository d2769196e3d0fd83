"""Running sums of loss and accuracy, cheap to update from every replica.

The sums are sync-on-read variables: each replica adds to its own copy inside the compiled
step with no cross-device traffic, and reading from cross-replica context adds the copies up.
That read is the only sync point, once per call of the compiled loop.
"""

import tensorflow as tf


class ClassificationMetrics(tf.Module):
    """Sums of weighted loss, correct predictions and examples since the last reset."""

    def __init__(self, name: str):
        super().__init__(name=name)
        with self.name_scope:
            self.loss_sum, self.correct, self.count = (
                tf.Variable(
                    0.0,
                    trainable=False,
                    name=n,
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM,
                )
                for n in ("loss_sum", "correct", "count")
            )

    def update(
        self,
        labels: tf.Tensor,
        logits: tf.Tensor,
        per_example_loss: tf.Tensor,
        weights: tf.Tensor | None = None,
    ) -> None:
        """Adds one batch (replica context). `weights` of 0 mark padding examples."""
        if weights is None:
            weights = tf.ones_like(per_example_loss)
        hits = tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels), tf.float32
        )
        self.loss_sum.assign_add(tf.reduce_sum(per_example_loss * weights))
        self.correct.assign_add(tf.reduce_sum(hits * weights))
        self.count.assign_add(tf.reduce_sum(weights))

    def result(self) -> dict[str, float]:
        """{'loss', 'accuracy'} over everything since the last reset (a device-to-host sync)."""
        count = max(float(self.count.read_value()), 1.0)
        return {
            "loss": float(self.loss_sum.read_value()) / count,
            "accuracy": float(self.correct.read_value()) / count,
        }

    def reset(self) -> None:
        for variable in (self.loss_sum, self.correct, self.count):
            variable.assign(0.0)
