"""Adafactor: Adam's second moment factored into row and column sums, a fraction of its state."""

from collections.abc import Callable

import tensorflow as tf

from trainer.optimizers.base import LearningRate, Optimizer
from trainer.optimizers.weight_decay import DecoupledWeightDecay, is_weight_matrix


def rms(x: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(tf.reduce_mean(tf.square(x)))


class Adafactor(Optimizer, flag_name="adafactor"):
    """`keras.optimizers.Adafactor` (Keras 3.15) with its defaults, step for step. At step t,

        rho = min(lr, 1 / sqrt(t));   alpha = max(epsilon_2, rms(x)) * rho
        beta = 1 - t^beta_2_decay;    G = g^2 + epsilon_1
        matrix [..., n, k]: R <- beta R + (1 - beta) mean(G, -1)   (n rows)
                            C <- beta C + (1 - beta) mean(G, -2)   (k columns)
                            V = (R / mean(R)) outer C
        otherwise:          V <- beta V + (1 - beta) G
        u = g / sqrt(V);    x <- x - alpha * u / max(1, rms(u) / clip_threshold)

    A matrix keeps n + k numbers of second moment where Adam keeps 2 n k, and no first moment:
    the memory Adafactor saves (measured in docs/optimizers.md). Keras also keeps a full-size V
    of every matrix, overwritten each step from R and C; here it is a temporary of the compiled
    update, so the state is R and C alone, and the steps are the same.

    The step size is relative to the variable's scale (alpha), capped by 1 / sqrt(t), Keras's
    and the paper's relative step: Keras's `relative_step` flag changes nothing in its code
    (rho takes the same minimum either way), so it has no counterpart here. Weight decay is
    Keras's, decoupled, before the step (w <- w - w * weight_decay * lr_t), on the variables
    `decays` picks; Keras has none by default, nor has this.

    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost", 2018.
    """

    elementwise = False  # rms(x) and rms(u) are over the whole variable.

    def __init__(
        self,
        learning_rate: LearningRate = 1e-3,
        beta_2_decay: float = -0.8,
        epsilon_1: float = 1e-30,
        epsilon_2: float = 1e-3,
        clip_threshold: float = 1.0,
        weight_decay: float = 0.0,
        decays: Callable[[tf.Variable], bool] = is_weight_matrix,
        name: str = "adafactor",
        transforms=(),
        **kwargs,
    ):
        if not beta_2_decay < 0:
            raise ValueError(f"{name}: beta_2_decay must be negative, got {beta_2_decay!r}")
        for label, value in (("epsilon_1", epsilon_1), ("clip_threshold", clip_threshold)):
            if not value > 0:
                raise ValueError(f"{name}: {label} must be positive, got {value!r}")
        if not epsilon_2 >= 0:
            raise ValueError(f"{name}: epsilon_2 must be 0 or more, got {epsilon_2!r}")
        decay = DecoupledWeightDecay(weight_decay, decays, name=f"{name}_weight_decay")
        super().__init__(learning_rate, name, transforms=(decay, *transforms), **kwargs)
        self.beta_2_decay, self.epsilon_1, self.epsilon_2 = beta_2_decay, epsilon_1, epsilon_2
        self.clip_threshold, self.weight_decay = clip_threshold, weight_decay

    @staticmethod
    def factored(var: tf.Variable) -> bool:
        return var.shape.rank >= 2

    def slot_names_for(self, var):
        return ("row", "column") if self.factored(var) else ("velocity",)

    def slot_shape(self, var, slot):
        shape = var.shape
        return {"row": shape[:-1], "column": shape[:-2] + shape[-1:]}.get(slot, shape)

    def update_step(self, grad, var, learning_rate, slots, step):
        t = tf.cast(step, var.dtype)
        rho = tf.minimum(learning_rate, 1.0 / tf.sqrt(t))
        alpha = tf.maximum(self.epsilon_2, rms(var)) * rho
        grad_square = tf.square(grad) + self.epsilon_1
        beta = 1.0 - tf.pow(t, self.beta_2_decay)
        if self.factored(var):
            row, column = slots
            row.assign(beta * row + (1.0 - beta) * tf.reduce_mean(grad_square, axis=-1))
            column.assign(beta * column + (1.0 - beta) * tf.reduce_mean(grad_square, axis=-2))
            row_share = row / tf.reduce_mean(row, axis=-1, keepdims=True)
            velocity = row_share[..., :, tf.newaxis] * column[..., tf.newaxis, :]
        else:
            (velocity,) = slots
            velocity.assign(beta * velocity + (1.0 - beta) * grad_square)
        update = grad / tf.sqrt(velocity)
        update = update / tf.maximum(1.0, rms(update) / self.clip_threshold)
        var.assign_sub(alpha * update)
