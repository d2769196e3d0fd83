"""Gradient descent with (heavy-ball) momentum."""

from trainer.optimizers.base import LearningRate, Optimizer


class Momentum(Optimizer, flag_name="momentum"):
    """change <- lr * g + momentum * change;  x <- x - change.

    The seed notebook's rule, with one fix: each variable keeps its own `change` (the notebook
    shares one Python attribute across all variables, so layers leak velocity into each other).

    Reference: Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
    """

    slot_names = ("change",)

    def __init__(
        self,
        learning_rate: LearningRate = 1e-3,
        momentum: float = 0.7,
        name: str = "momentum",
        **kwargs,
    ):
        super().__init__(learning_rate, name, **kwargs)  # xla_update, loss_scaling
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = momentum

    def update_step(self, grad, var, learning_rate, slots, step):
        (change,) = slots
        change.assign(learning_rate * grad + self.momentum * change)
        var.assign_sub(change)
