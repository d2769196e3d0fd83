"""Adam: adaptive moment estimation with bias correction."""

import tensorflow as tf

from trainer.optimizers.base import LearningRate, Optimizer


class Adam(Optimizer):
    """The seed notebook's Adam, with its moments kept in variables.

        m <- beta_1 * m + (1 - beta_1) * g
        v <- beta_2 * v + (1 - beta_2) * g^2
        x <- x - lr * (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)

    epsilon sits outside the square root of the *corrected* second moment, as in the notebook
    and the paper (Keras adds it after rescaling by the correction; see tests/ for the relation).

    The bias corrections are computed in float64 and rounded once to float32: that is what the
    notebook's Python-float arithmetic does, and the convergence suite's exact-equality test
    depends on every rounding step.

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2015.
    """

    slot_names = ("m", "v")

    def __init__(
        self,
        learning_rate: LearningRate = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        name: str = "adam",
        **kwargs,
    ):
        super().__init__(learning_rate, name, **kwargs)  # xla_update, loss_scaling
        for label, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name}: {label} must be in [0, 1), got {beta!r}")
        if epsilon <= 0:
            raise ValueError(f"{name}: epsilon must be positive, got {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def update_step(self, grad, var, learning_rate, slots, step):
        m, v = slots
        t = tf.cast(step, tf.float64)
        correction_1 = tf.cast(1.0 - tf.pow(tf.constant(self.beta_1, tf.float64), t), var.dtype)
        correction_2 = tf.cast(1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), t), var.dtype)
        m.assign(self.beta_1 * m + (1.0 - self.beta_1) * grad)
        v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad))
        m_hat = m / correction_1
        v_hat = v / correction_2
        var.assign_sub(learning_rate * (m_hat / (tf.sqrt(v_hat) + self.epsilon)))
