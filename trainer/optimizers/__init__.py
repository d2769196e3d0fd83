"""Hand-written optimizers, the transforms they compose with, and learning-rate schedules.

`create(name, learning_rate, ...)` maps a flag value to an optimizer. Every module of this
package is imported here, so an optimizer defined in a new file with
`class RMSprop(Optimizer, flag_name="rmsprop")` and listed in trainer/choices.py's OPTIMIZERS
(which the flags are checked by, without TensorFlow) is `--optimizer=rmsprop`
(docs/writing-an-optimizer.md).
"""

import importlib
import pkgutil
from collections.abc import Sequence

from trainer.optimizers.adam import Adam
from trainer.optimizers.adamw import AdamW
from trainer.optimizers.base import (
    REGISTRY,
    DynamicLossScale,
    LearningRate,
    Optimizer,
    settings_of,
)
from trainer.optimizers.clipping import ClipByGlobalNorm
from trainer.optimizers.ema import WeightEMA
from trainer.optimizers.gradient_descent import GradientDescent
from trainer.optimizers.lion import Lion
from trainer.optimizers.momentum import Momentum
from trainer.optimizers.muon import Muon
from trainer.optimizers.schedules import SCHEDULES, create_schedule
from trainer.optimizers.transform import Transform
from trainer.optimizers.weight_decay import DecoupledWeightDecay, is_weight_matrix

for _module in pkgutil.iter_modules(__path__):  # Optimizers in files of their own.
    importlib.import_module(f"{__name__}.{_module.name}")

# Flag values and JSON keys use these short names: name -> class.
OPTIMIZERS = REGISTRY


def options(name: str) -> tuple[str, ...]:
    """The keyword settings the optimizer named `name` takes (beyond the learning rate)."""
    return settings_of(OPTIMIZERS[name])


def create(
    name: str,
    learning_rate: LearningRate,
    xla_update: bool = True,
    loss_scaling: bool | DynamicLossScale = False,
    transforms: Sequence[Transform] = (),
    **settings,
) -> Optimizer:
    """Returns a new optimizer by its short name (see OPTIMIZERS): its defaults, but for the
    `settings` given (keywords of its class, see `options`). `loss_scaling`: True for the
    default dynamic loss scale, or the DynamicLossScale to use."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    unknown = sorted(set(settings) - set(options(name)))
    if unknown:
        raise ValueError(f"optimizer {name!r} takes no {', '.join(unknown)}")
    return OPTIMIZERS[name](
        learning_rate=learning_rate,
        xla_update=xla_update,
        loss_scaling=loss_scaling,
        transforms=transforms,
        **settings,
    )


__all__ = [
    "Adam",
    "AdamW",
    "ClipByGlobalNorm",
    "DecoupledWeightDecay",
    "DynamicLossScale",
    "GradientDescent",
    "LearningRate",
    "Lion",
    "Momentum",
    "Muon",
    "OPTIMIZERS",
    "Optimizer",
    "SCHEDULES",
    "Transform",
    "WeightEMA",
    "create",
    "create_schedule",
    "is_weight_matrix",
    "options",
]
