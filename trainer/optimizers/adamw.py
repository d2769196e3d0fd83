"""AdamW: Adam with decoupled weight decay."""

from collections.abc import Callable

import tensorflow as tf

from trainer.optimizers.adam import Adam
from trainer.optimizers.base import LearningRate
from trainer.optimizers.weight_decay import DecoupledWeightDecay, is_weight_matrix


class AdamW(Adam, flag_name="adamw"):
    """Adam, after w <- w - w * weight_decay * lr_t on the variables `decays` picks (by
    default the weight matrices, never biases). Adam's epsilon stays where the paper puts it
    (see Adam); the defaults are Keras's.

    Reference: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 1e-3,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        epsilon_hat: bool = False,
        decays: Callable[[tf.Variable], bool] = is_weight_matrix,
        name: str = "adamw",
        transforms=(),
        **kwargs,
    ):
        decay = DecoupledWeightDecay(weight_decay, decays, name=f"{name}_weight_decay")
        super().__init__(
            learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            epsilon_hat=epsilon_hat,
            name=name,
            transforms=(decay, *transforms),
            **kwargs,  # xla_update, loss_scaling
        )
        self.weight_decay = weight_decay
