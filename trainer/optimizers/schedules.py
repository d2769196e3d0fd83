"""Learning-rate schedules: what an optimizer's `learning_rate` may be besides a number.

An optimizer calls a schedule with its step counter (a tensor) before each update, so the rate
changes inside the compiled loop without retracing it.
"""

import tensorflow as tf

from trainer.choices import SCHEDULES
from trainer.optimizers.base import LearningRate


def create_schedule(
    name: str, peak: float, total_steps: int, warmup_steps: int = 0
) -> LearningRate:
    """Both start with a linear warm-up from 0 over `warmup_steps`, if any. `constant`: then
    `peak` to the end. `cosine`: then cosine decay from `peak` to 0 at `total_steps`."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if name == "constant" and not warmup_steps:
        return peak
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_steps=warmup_steps,
        warmup_target=peak if warmup_steps else None,
        alpha=1.0 if name == "constant" else 0.0,
    )  # Decays to alpha * peak: none at all.
