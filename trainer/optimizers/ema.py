"""An exponential moving average of the weights, kept beside them."""

from collections.abc import Sequence

import tensorflow as tf

from trainer.optimizers.transform import Transform, slot_base_name


class WeightEMA(Transform):
    """After every applied step, average <- decay * average + (1 - decay) * w.

    The averages start equal to the weights when the optimizer is built, are mirrored like them
    and live in the optimizer's checkpoint, so a resumed run goes on with the very same values.
    A step skipped for a float16 overflow leaves them untouched.

    `averages`: variables to keep the averages in, one per optimized variable and in their
    order, e.g. the weights of a second copy of the model, which then computes with the
    averages (the trainer validates, tests and exports it). By default they are created here.
    """

    def __init__(
        self,
        decay: float,
        averages: Sequence[tf.Variable] | None = None,
        name: str = "weight_ema",
    ):
        super().__init__(name=name)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"{name}: decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.averages = list(averages) if averages is not None else None

    def build(self, variables):
        if self.averages is None:
            with self.name_scope:
                self.averages = [
                    tf.Variable(var, trainable=False, name=f"{slot_base_name(var)}_ema")
                    for var in variables
                ]
            return
        if [a.shape for a in self.averages] != [v.shape for v in variables]:
            raise ValueError(
                f"{self.name}: {len(self.averages)} averages of shapes "
                f"{[a.shape.as_list() for a in self.averages]} for variables of shapes "
                f"{[v.shape.as_list() for v in variables]}"
            )
        for average, var in zip(self.averages, variables):
            average.assign(var)

    def slots_of(self, index):
        return (self.averages[index],)

    def after_update(self, index, var, slots):
        (average,) = slots
        average.assign(self.decay * average + (1.0 - self.decay) * var)
