"""Schedule-Free AdamW: no learning-rate schedule to choose; an average of the iterates instead."""

from collections.abc import Callable, Sequence

import tensorflow as tf

from trainer.optimizers.adam import check_moments
from trainer.optimizers.base import Optimizer
from trainer.optimizers.weight_decay import is_weight_matrix


class ScheduleFreeAdamW(Optimizer, flag_name="schedule_free_adamw"):
    """Three sequences: the model's variables are y, where the gradient is taken; z takes the
    AdamW steps; x, the average of the z's, is what to evaluate and export. At step t (from 1),
    with g the gradient at y and z_1 = x_1 = y_1 the initial weights:

        lr_t = lr * min(t / warmup_steps, 1)
        z <- z - lr_t * weight_decay * y                  (the variables `decays` picks)
        v <- beta_2 * v + (1 - beta_2) * g^2
        z <- z - lr_t * g / (sqrt(v / (1 - beta_2^t)) + epsilon)
        x <- (1 - c_t) * x + c_t * z,   c_t = w_t / (w_1 + ... + w_t),   w_t = t^r * lr_t^p
        y <- beta_1 * x + (1 - beta_1) * z

    p is `weight_lr_power`: with p = 2 the warm-up's small steps weigh little in x. This is the
    authors' reference (adamw_schedulefree_reference.py), weight decay at y included. Keras's
    ScheduleFreeAdamW differs (docs/optimizers.md): it averages with c_t = 1/t (ours with r = 0,
    p = 0), its weight decay shrinks y before the step, and it recovers x from y and the z of
    after the step's update.

    `learning_rate` is a number: the warm-up is the optimizer's own, and x's average takes the
    place of a decaying schedule (lr_max of the reference is lr_t, which never decreases here).
    `averages`: variables to keep x in, one per optimized variable and in their order, e.g.
    the weights of a second copy of the model, which then computes with x (the trainer
    validates, tests and exports it); by default the optimizer creates them. They start equal
    to the weights when the optimizer is built, like z.

    Reference: Defazio et al., "The Road Less Scheduled", 2024; the winner of AlgoPerf 2024's
    self-tuning track.
    """

    slot_names = ("z", "v", "x")

    def __init__(
        self,
        learning_rate: float = 0.0025,
        weight_decay: float = 0.0,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        decays: Callable[[tf.Variable], bool] = is_weight_matrix,
        averages: Sequence[tf.Variable] | None = None,
        name: str = "schedule_free_adamw",
        **kwargs,
    ):
        if callable(learning_rate):
            raise ValueError(
                f"{name}: learning_rate must be a number, not a schedule: the warm-up is "
                "warmup_steps, and the average x replaces a decay"
            )
        super().__init__(learning_rate, name, **kwargs)  # xla_update, loss_scaling, transforms
        check_moments(name, beta_1, beta_2, epsilon)
        if not weight_decay >= 0:
            raise ValueError(f"{name}: weight_decay must be 0 or more, got {weight_decay!r}")
        if warmup_steps < 0:
            raise ValueError(f"{name}: warmup_steps must be 0 or more, got {warmup_steps!r}")
        self.weight_decay, self.beta_1, self.beta_2 = float(weight_decay), beta_1, beta_2
        self.epsilon, self.warmup_steps = epsilon, int(warmup_steps)
        self.r, self.weight_lr_power = float(r), float(weight_lr_power)
        self.decays = decays
        self.averages = list(averages) if averages is not None else None
        # Once a step, before the variables' updates: w_1 + ... + w_t, and c_t (float64, as the
        # reference's Python floats). Created by build().
        self.weight_sum = self.average_weight = None

    def build(self, variables):
        super().build(variables)
        # One sum per learning rate: a vector of rates (the convergence suite's runs, one a
        # lane) keeps one for each.
        zero = tf.zeros_like(self._warmed_up(tf.constant(1, tf.int64)))
        with self.name_scope:
            self.weight_sum, self.average_weight = (
                tf.Variable(
                    zero,
                    trainable=False,
                    name=name,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
                for name in ("weight_sum", "average_weight")
            )
        if self.averages is not None:
            if [a.shape for a in self.averages] != [v.shape for v in variables]:
                raise ValueError(
                    f"{self.name}: {len(self.averages)} averages of shapes "
                    f"{[a.shape.as_list() for a in self.averages]} for variables of shapes "
                    f"{[v.shape.as_list() for v in variables]}"
                )
            # x lives in the variables given; the ones built for it are dropped unused.
            self.slots = [[z, v, x] for (z, v, _), x in zip(self.slots, self.averages)]
            self.start_from(variables)

    def start_from(self, variables):
        for var, (z, _, x) in zip(variables, self.slots):  # z_1 = x_1 = y_1.
            z.assign(var)
            x.assign(var)

    def current_learning_rate(self) -> tf.Tensor:
        """lr_t of the step about to run: the peak, after the linear warm-up."""
        return self._warmed_up(self.iterations + 1)

    def _warmed_up(self, step) -> tf.Tensor:
        if isinstance(self.learning_rate, (int, float)):  # In float64, as the reference.
            learning_rate = tf.constant(self.learning_rate, tf.float64)
        else:  # A tensor of rates (the convergence suite's lanes).
            learning_rate = tf.cast(self.learning_rate, tf.float64)
        if not self.warmup_steps:
            return learning_rate
        fraction = tf.cast(step, tf.float64) / self.warmup_steps
        return learning_rate * tf.minimum(fraction, 1.0)

    def before_updates(self, step, learning_rate, applies):
        weight = tf.pow(tf.cast(step, tf.float64), self.r) * tf.pow(
            learning_rate, self.weight_lr_power
        )
        weight_sum = self.weight_sum + weight
        self.weight_sum.assign(tf.where(applies, weight_sum, self.weight_sum))
        self.average_weight.assign(tf.where(applies, weight / weight_sum, self.average_weight))

    def update_step(self, grad, var, learning_rate, slots, step):
        z, v, x = slots
        if self.weight_decay and self.decays(var):  # Decided as the update is traced.
            z.assign_sub(learning_rate * self.weight_decay * var)  # At y, as the reference.
        t = tf.cast(step, tf.float64)
        correction_2 = tf.cast(1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), t), var.dtype)
        v.assign(self.beta_2 * v + (1.0 - self.beta_2) * tf.square(grad))
        z.assign_sub(learning_rate * grad / (tf.sqrt(v / correction_2) + self.epsilon))
        average_weight = tf.cast(self.average_weight, var.dtype)
        x.assign((1.0 - average_weight) * x + average_weight * z)
        var.assign(self.beta_1 * x + (1.0 - self.beta_1) * z)
