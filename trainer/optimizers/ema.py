"""An exponential moving average of the weights, kept beside them, with TensorFlow's warm-up."""

from collections.abc import Sequence

import tensorflow as tf

from trainer.optimizers.transform import Transform, slot_base_name, step_count


def warmed_up_decay(decay: float, t: tf.Tensor) -> tf.Tensor:
    """The decay at applied step t (from 1): min(decay, (1 + t) / (10 + t)), the `num_updates`
    rule of tf.train.ExponentialMovingAverage."""
    t = tf.cast(t, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1.0 + t) / (10.0 + t))


class WeightEMA(Transform):
    """After every applied step t, average <- d_t * average + (1 - d_t) * w, with
    d_t = warmed_up_decay(decay, t): 2/11 at the first step, `decay` from t = (10 decay - 1) /
    (1 - decay) on (989 steps at 0.99, 8,989 at 0.999).

    A fixed decay from the initial weights keeps decay^t of them in the average (68% after
    3,900 steps at 0.9999); Optax's debiasing drops them but weighs every step since the first
    alike while decay^t is not small (there, the first 1,950 steps hold 45% of the average).
    The warm-up makes the average that of the latest steps whatever the decay: the initial
    weights hold 10! (t + 1)! / (t + 10)! of it, 2e-12 after 100 steps. docs/optimizers.md has
    the numbers, and a measurement.

    `updates`, the t above, counts the applied steps: a step skipped for a float16 overflow
    leaves it and the averages untouched. Both are mirrored like the weights and live in the
    optimizer's checkpoint, so a resumed run goes on with the very same values.

    `averages`: variables to keep the averages in, one per optimized variable and in their
    order, e.g. the weights of a second copy of the model, which then computes with the
    averages (the trainer validates, tests and exports it). By default they are created here.
    """

    def __init__(
        self,
        decay: float,
        averages: Sequence[tf.Variable] | None = None,
        name: str = "weight_ema",
    ):
        super().__init__(name=name)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"{name}: decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.averages = list(averages) if averages is not None else None
        self.updates = None  # int64: the steps applied, built by build().

    def build(self, variables):
        with self.name_scope:
            self.updates = step_count("updates")
            if self.averages is None:
                self.averages = [
                    tf.Variable(var, trainable=False, name=f"{slot_base_name(var)}_ema")
                    for var in variables
                ]
                return
        if [a.shape for a in self.averages] != [v.shape for v in variables]:
            raise ValueError(
                f"{self.name}: {len(self.averages)} averages of shapes "
                f"{[a.shape.as_list() for a in self.averages]} for variables of shapes "
                f"{[v.shape.as_list() for v in variables]}"
            )
        for average, var in zip(self.averages, variables):
            average.assign(var)

    def slots_of(self, index):
        return (self.averages[index], self.updates)

    def scale_gradients(self, grad_norm, finite):
        # Once a step, before the variables' updates read it: t for this step, if it applies.
        self.updates.assign_add(tf.cast(finite, tf.int64))
        return None

    def after_update(self, index, var, slots):
        average, updates = slots
        decay = tf.cast(warmed_up_decay(self.decay, updates), var.dtype)
        average.assign(decay * average + (1.0 - decay) * var)
