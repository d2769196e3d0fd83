"""Hand-written optimizers and learning-rate schedules; `create(name, learning_rate)` maps a
flag value to an optimizer."""

from trainer.optimizers.adam import Adam
from trainer.optimizers.base import LearningRate, Optimizer
from trainer.optimizers.gradient_descent import GradientDescent
from trainer.optimizers.momentum import Momentum
from trainer.optimizers.schedules import SCHEDULES, create_schedule

# Flag values and JSON keys use these short names.
OPTIMIZERS = {"gd": GradientDescent, "momentum": Momentum, "adam": Adam}


def create(
    name: str, learning_rate: LearningRate, xla_update: bool = True, loss_scaling: bool = False
) -> Optimizer:
    """Returns a new optimizer by its short name (see OPTIMIZERS), with default settings."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](
        learning_rate=learning_rate, xla_update=xla_update, loss_scaling=loss_scaling
    )


__all__ = [
    "Adam",
    "GradientDescent",
    "LearningRate",
    "Momentum",
    "OPTIMIZERS",
    "Optimizer",
    "SCHEDULES",
    "create",
    "create_schedule",
]
