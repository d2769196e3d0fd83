"""Adam: adaptive moment estimation with bias correction."""

import tensorflow as tf

from trainer.optimizers.base import LearningRate, Optimizer


def check_betas(name: str, **betas: float) -> None:
    """Raises ValueError unless every beta is in [0, 1)."""
    for label, beta in betas.items():
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name}: {label} must be in [0, 1), got {beta!r}")


def check_moments(name: str, beta_1: float, beta_2: float, epsilon: float) -> None:
    """Raises ValueError unless the betas of Adam's two moments are in [0, 1) and epsilon is
    positive: the settings every optimizer of Adam's family checks alike."""
    check_betas(name, beta_1=beta_1, beta_2=beta_2)
    if epsilon <= 0:
        raise ValueError(f"{name}: epsilon must be positive, got {epsilon!r}")


def adam_update(grad, var, learning_rate, m, v, step, beta_1, beta_2, epsilon, epsilon_hat):
    """One Adam step on `var` and its moments `m`, `v` (also Muon's rule for what it leaves to
    AdamW). `epsilon_hat`: epsilon is the paper's ε̂, added to sqrt(v) before the bias
    correction, as Keras and TensorFlow put it; else where Algorithm 1 puts it."""
    t = tf.cast(step, tf.float64)
    correction_1 = tf.cast(1.0 - tf.pow(tf.constant(beta_1, tf.float64), t), var.dtype)
    correction_2 = tf.cast(1.0 - tf.pow(tf.constant(beta_2, tf.float64), t), var.dtype)
    m.assign(beta_1 * m + (1.0 - beta_1) * grad)
    v.assign(beta_2 * v + (1.0 - beta_2) * tf.square(grad))
    if epsilon_hat:
        step_size = learning_rate * tf.sqrt(correction_2) / correction_1
        var.assign_sub(step_size * m / (tf.sqrt(v) + epsilon))
    else:
        var.assign_sub(learning_rate * ((m / correction_1) / (tf.sqrt(v / correction_2) + epsilon)))


class Adam(Optimizer, flag_name="adam"):
    """The seed notebook's Adam, with its moments kept in variables.

        m <- beta_1 * m + (1 - beta_1) * g
        v <- beta_2 * v + (1 - beta_2) * g^2
        x <- x - lr * (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)

    epsilon sits outside the square root of the *corrected* second moment, as in the notebook
    and the paper's Algorithm 1; `epsilon_hat=True` puts it where Keras does, before the
    correction (the paper's ε̂): the two agree when epsilon is negligible beside sqrt(v).

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
        epsilon_hat: bool = False,
        name: str = "adam",
        **kwargs,
    ):
        super().__init__(learning_rate, name, **kwargs)  # xla_update, loss_scaling, transforms
        check_moments(name, beta_1, beta_2, epsilon)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.epsilon_hat = epsilon_hat

    def update_step(self, grad, var, learning_rate, slots, step):
        m, v = slots
        adam_update(
            grad,
            var,
            learning_rate,
            m,
            v,
            step,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            self.epsilon_hat,
        )
