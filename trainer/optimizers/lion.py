"""Lion: evolved sign momentum."""

from collections.abc import Callable

import tensorflow as tf

from trainer.optimizers.adam import check_betas
from trainer.optimizers.base import LearningRate, Optimizer
from trainer.optimizers.weight_decay import DecoupledWeightDecay, is_weight_matrix


class Lion(Optimizer, flag_name="lion"):
    """One slot and a sign:

            x <- x - lr * sign(beta_1 * m + (1 - beta_1) * g)
            m <- beta_2 * m + (1 - beta_2) * g

        with optional decoupled weight decay before it, as in AdamW. Every coordinate moves by
        exactly lr, so Lion wants a learning rate 3-10x smaller than AdamW's and, to keep the same
        decay per step, a weight decay 3-10x larger (the paper's advice): the default learning rate
    is a tenth of AdamW's. The other defaults are Keras's.

        Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """

    slot_names = ("m",)

    def __init__(
        self,
        learning_rate: LearningRate = 1e-4,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        weight_decay: float = 0.0,
        decays: Callable[[tf.Variable], bool] = is_weight_matrix,
        name: str = "lion",
        transforms=(),
        **kwargs,
    ):
        check_betas(name, beta_1=beta_1, beta_2=beta_2)
        if beta_1 == 0.0:
            raise ValueError(f"{name}: beta_1 must be in (0, 1): at 0 Lion is signSGD")
        decay = DecoupledWeightDecay(weight_decay, decays, name=f"{name}_weight_decay")
        super().__init__(learning_rate, name, transforms=(decay, *transforms), **kwargs)
        self.beta_1, self.beta_2, self.weight_decay = beta_1, beta_2, weight_decay

    def update_step(self, grad, var, learning_rate, slots, step):
        (m,) = slots
        var.assign_sub(learning_rate * tf.sign(self.beta_1 * m + (1.0 - self.beta_1) * grad))
        m.assign(self.beta_2 * m + (1.0 - self.beta_2) * grad)
