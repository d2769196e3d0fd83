"""LAMB: Adam's step rescaled per variable by a layer-wise trust ratio, for large batches."""

from collections.abc import Callable

import tensorflow as tf

from trainer.optimizers.adam import check_moments
from trainer.optimizers.base import LearningRate, Optimizer
from trainer.optimizers.nadamw import bias_correction
from trainer.optimizers.weight_decay import DecoupledWeightDecay, is_weight_matrix


class Lamb(Optimizer, flag_name="lamb"):
    """`keras.optimizers.Lamb` (Keras 3.15) with the paper's weight decay (You et al. 2020,
    Algorithm 2), per variable x:

        m <- beta_1 * m + (1 - beta_1) * g;   v <- beta_2 * v + (1 - beta_2) * g^2
        r <- (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon) + weight_decay * x
        x <- x - lr * (||x|| / ||r||) * r       (the ratio is 1 if either norm is 0)

    The trust ratio ||x|| / ||r|| makes every variable move by lr times its own norm, whatever
    the scale of its gradient: what lets LAMB keep one learning rate as the batch grows. g is the
    gradient summed across replicas and workers (base.py), so every copy computes the same ratio.

    Weight decay is inside r, as in the paper, so the trust ratio bounds the decay too; Keras
    decays before the step instead (w <- w - w * weight_decay * lr, as AdamW), outside the
    ratio. `decay_in_trust_ratio=False` does what Keras does. Only the variables `decays` picks
    decay (by default the weight matrices, as the paper excludes biases and norms). The other
    defaults are Keras's (the paper's epsilon is 1e-6).

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes", 2020.
    """

    slot_names = ("m", "v")
    elementwise = False  # The trust ratio's norms are over the whole variable.

    def __init__(
        self,
        learning_rate: LearningRate = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
        decay_in_trust_ratio: bool = True,
        decays: Callable[[tf.Variable], bool] = is_weight_matrix,
        name: str = "lamb",
        transforms=(),
        **kwargs,
    ):
        check_moments(name, beta_1, beta_2, epsilon)
        if not weight_decay >= 0:
            raise ValueError(f"{name}: weight_decay must be 0 or more, got {weight_decay!r}")
        if not decay_in_trust_ratio:
            decay = DecoupledWeightDecay(weight_decay, decays, name=f"{name}_weight_decay")
            transforms = (decay, *transforms)
        super().__init__(learning_rate, name, transforms=transforms, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.weight_decay, self.decay_in_trust_ratio = weight_decay, decay_in_trust_ratio
        self.decays = decays
        self._decaying = []  # Per variable: whether its r holds weight_decay * x (plain bools).

    def build(self, variables):
        super().build(variables)
        self._decaying = [
            self.decay_in_trust_ratio and bool(self.weight_decay) and bool(self.decays(var))
            for var in variables
        ]

    def update_rule_for(self, index):
        if self._decaying[index]:
            return self._decaying_step
        return self.update_step

    def _decaying_step(self, grad, var, learning_rate, slots, step):
        self.update_step(grad, var, learning_rate, slots, step, weight_decay=self.weight_decay)

    def update_step(self, grad, var, learning_rate, slots, step, weight_decay=None):
        m, v = slots
        m.assign(self.beta_1 * m + (1.0 - self.beta_1) * grad)
        v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad))
        m_hat = m / bias_correction(self.beta_1, step, var.dtype)
        v_hat = v / bias_correction(self.beta_2, step, var.dtype)
        update = m_hat / (tf.sqrt(v_hat) + self.epsilon)
        if weight_decay is not None:
            update = update + weight_decay * var
        var_norm, update_norm = tf.norm(var), tf.norm(update)
        ratio = tf.where((var_norm > 0) & (update_norm > 0), var_norm / update_norm, 1.0)
        var.assign_sub(ratio * learning_rate * update)
