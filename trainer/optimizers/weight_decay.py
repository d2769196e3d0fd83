"""Decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019)."""

from collections.abc import Callable

import tensorflow as tf

from trainer.optimizers.transform import Transform


def is_weight_matrix(var: tf.Variable) -> bool:
    """The default choice of what decays: weight matrices, never biases (nor any 0-D or 1-D
    variable); decaying biases and norm scales is a known mistake (transformers#4360)."""
    return var.shape.rank >= 2


class DecoupledWeightDecay(Transform):
    """Before each update, w <- w - w * rate * lr_t, with lr_t this step's scheduled learning
    rate: the convention of Keras, PyTorch and Optax. `decays(variable)` says which
    variables decay; by default the weight matrices only."""

    def __init__(
        self,
        rate: float,
        decays: Callable[[tf.Variable], bool] = is_weight_matrix,
        name: str = "weight_decay",
    ):
        super().__init__(name=name)
        if not rate >= 0:
            raise ValueError(f"{name}: the weight decay rate must be 0 or more, got {rate!r}")
        self.rate, self.decays = float(rate), decays
        self._decaying = []  # Per variable: whether it decays (plain bools, not checkpointed).

    def build(self, variables):
        self._decaying = [bool(self.rate) and bool(self.decays(var)) for var in variables]

    def before_update(self, index, var, learning_rate, slots):
        if self._decaying[index]:
            var.assign(var - var * self.rate * learning_rate)  # Keras's order of rounding.
