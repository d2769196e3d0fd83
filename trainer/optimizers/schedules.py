"""Learning-rate schedules: what an optimizer's `learning_rate` may be besides a number.

An optimizer calls a schedule with its step counter (a tensor) before each update, so the rate
changes inside the compiled loop without retracing it.
"""

import tensorflow as tf

from trainer.optimizers.base import LearningRate

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(name: str, peak: float, total_steps: int,
                           warmup_steps: int = 0) -> LearningRate:
    """`constant`: `peak` throughout (no warm-up). `cosine`: linear warm-up from 0 over
    `warmup_steps`, then cosine decay from `peak` to 0 at `total_steps`."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    if name == "constant":
        return peak
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else peak,
        decay_steps=total_steps - warmup_steps, warmup_steps=warmup_steps,
        warmup_target=peak if warmup_steps else None)
