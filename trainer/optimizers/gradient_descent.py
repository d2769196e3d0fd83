"""Plain gradient descent."""

from trainer.optimizers.base import LearningRate, Optimizer


class GradientDescent(Optimizer, flag_name="gd"):
    """x <- x - lr * g.

    Example:
        opt = GradientDescent(learning_rate=0.1)
        opt.apply_gradients([g], [x])
    """

    def __init__(
        self, learning_rate: LearningRate = 1e-3, name: str = "gradient_descent", **kwargs
    ):
        super().__init__(learning_rate, name, **kwargs)  # xla_update, loss_scaling

    def update_step(self, grad, var, learning_rate, slots, step):
        var.assign_sub(learning_rate * grad)
