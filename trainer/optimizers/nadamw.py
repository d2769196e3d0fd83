"""NAdamW: Adam with Nesterov's look-ahead and decoupled weight decay, AlgoPerf's baseline."""

from collections.abc import Callable

import tensorflow as tf

from trainer.optimizers.adam import check_moments
from trainer.optimizers.base import LearningRate, Optimizer
from trainer.optimizers.weight_decay import DecoupledWeightDecay, is_weight_matrix

# Keras's Nadam: the momentum of step t is beta_1 * (1 - 0.5 * DOZAT_DECAY^t).
DOZAT_DECAY = 0.96


def bias_correction(beta: float, step: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """1 - beta^t, computed in float64 and rounded once, as Adam's (adam.py)."""
    return tf.cast(1.0 - tf.pow(tf.constant(beta, tf.float64), tf.cast(step, tf.float64)), dtype)


class NAdamW(Optimizer, flag_name="nadamw"):
    """The NAdamW that MLCommons AlgoPerf's baselines run (its JAX and PyTorch versions agree):
    after decoupled weight decay (w <- w - w * weight_decay * lr_t, as AdamW, on the variables
    `decays` picks, by default the weight matrices),

        m <- beta_1 * m + (1 - beta_1) * g
        v <- beta_2 * v + (1 - beta_2) * g^2
        x <- x - lr * ((beta_1 * m + (1 - beta_1) * g) / (1 - beta_1^t))
                    / (sqrt(v / (1 - beta_2^t)) + epsilon)

    Nesterov's look-ahead (the momentum applied once more to the step's gradient) with Adam's
    bias corrections and no momentum schedule: Dozat's NAdam as Choi et al. 2019 (Table 1) write
    it. epsilon sits outside the square root of the corrected moment, as in AlgoPerf (whose
    default, 1e-8, is ours).

    `momentum_schedule=True` is `keras.optimizers.Nadam` (Keras 3.15) instead: the momentum of
    step t is mu_t = beta_1 * (1 - 0.5 * 0.96^t), and with P_t = mu_1 ... mu_t,

        x <- x - lr * (mu_{t+1} m / (1 - P_{t+1}) + (1 - mu_t) g / (1 - P_t))
                    / (sqrt(v / (1 - beta_2^t)) + epsilon)

    (Keras's schedule raises 0.96 to the step, where Dozat's paper raises it to t / 250). It
    keeps log P_t per variable, a scalar slot. The two share m and v; they differ most in the
    first steps (the first moves x by (1 + beta_1) * lr against the gradient's sign here, by
    about 1.06 * lr at beta_1 = 0.9 in Keras's) and agree as 0.96^t vanishes.

    References: Dozat, "Incorporating Nesterov Momentum into Adam", 2016; Choi et al., "On
    Empirical Comparisons of Optimizers for Deep Learning", 2019; Dahl et al., "Benchmarking
    Neural Network Training Algorithms" (AlgoPerf), 2023.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 1e-3,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        momentum_schedule: bool = False,
        decays: Callable[[tf.Variable], bool] = is_weight_matrix,
        name: str = "nadamw",
        transforms=(),
        **kwargs,
    ):
        check_moments(name, beta_1, beta_2, epsilon)
        decay = DecoupledWeightDecay(weight_decay, decays, name=f"{name}_weight_decay")
        super().__init__(learning_rate, name, transforms=(decay, *transforms), **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.weight_decay, self.momentum_schedule = weight_decay, momentum_schedule
        self.slot_names = ("m", "v", "log_momentum_product") if momentum_schedule else ("m", "v")

    def slot_shape(self, var, slot):
        return () if slot == "log_momentum_product" else var.shape

    def update_step(self, grad, var, learning_rate, slots, step):
        if self.momentum_schedule:
            return self._keras_step(grad, var, learning_rate, slots, step)
        m, v = slots
        m.assign(self.beta_1 * m + (1.0 - self.beta_1) * grad)
        v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad))
        m_hat = (self.beta_1 * m + (1.0 - self.beta_1) * grad) / bias_correction(
            self.beta_1, step, var.dtype
        )
        v_hat = v / bias_correction(self.beta_2, step, var.dtype)
        var.assign_sub(learning_rate * m_hat / (tf.sqrt(v_hat) + self.epsilon))

    def _keras_step(self, grad, var, learning_rate, slots, step):
        # Keras's Nadam.update_step, its order of operations kept.
        m, v, log_product = slots
        t = tf.cast(step, var.dtype)
        mu_t = self.beta_1 * (1.0 - 0.5 * tf.pow(tf.constant(DOZAT_DECAY, var.dtype), t))
        mu_next = self.beta_1 * (1.0 - 0.5 * tf.pow(tf.constant(DOZAT_DECAY, var.dtype), t + 1))
        log_product.assign(log_product + tf.math.log(mu_t))
        product = tf.exp(log_product)
        product_next = product * mu_next
        m.assign_add((grad - m) * (1.0 - self.beta_1))
        v.assign_add((tf.square(grad) - v) * (1.0 - self.beta_2))
        m_hat = mu_next * m / (1.0 - product_next) + (1.0 - mu_t) * grad / (1.0 - product)
        v_hat = v / (1.0 - tf.pow(tf.constant(self.beta_2, var.dtype), t))
        var.assign_sub(m_hat * learning_rate / (tf.sqrt(v_hat) + self.epsilon))
