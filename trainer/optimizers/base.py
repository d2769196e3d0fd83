"""The one place where optimizers meet `tf.distribute`.

A subclass states only its state (`slot_names`; `slot_shape` where a slot is not the
variable's shape) and its math (`update_step`). By default each
variable's `update_step` is compiled by XLA into one fused loop: one pass over the variable,
its gradient and its slots, where op by op Adam makes 16 (they took about 40% of the trainer's
step at batch 128). `xla_update=False` runs it op by op, rounding exactly as eager mode does,
which the convergence suite needs. Where the train step is itself one XLA program (one replica
in sync, `--jit_compile`: trainer/step/steps.py), this very code traces into it: the sum across
one replica is the identity, `merge_call` runs in the same compiled function, and each
variable's compiled update is part of the step's program. Everything a synchronous
multi-replica update needs lives here, following the pattern `tf.distribute` documents and
Keras uses:

1. In replica context, sum the gradients across replicas (`all_reduce`).
2. `merge_call` into cross-replica context.
3. `strategy.extended.update` applies `update_step` once per variable, on every device's copy,
   with that device's copy of the slots: every copy sees the same summed gradient and so stays
   identical. The variables' updates are independent, so the executor may run them side by side.
4. Increment the step counter once, keep the norm of the summed gradients for logging, and
   note the first step where that norm is not finite (the summed gradients are the same on
   every replica, so every replica agrees without more traffic).

Two counts of steps: `iterations`, the steps applied, which the schedule and the rule (Adam's
bias correction) see; and `steps_taken`, the batches taken, the skipped steps among them. A
run's step, its checkpoints' numbers, its data position and `first_nonfinite_step` count
steps taken, so a resumption takes the batch after the last one taken, skipped or not.

Dynamic loss scaling, for float16 compute (`loss_scaling=True`, or its `DynamicLossScale`
settings), as Keras and PyTorch AMP do it: the train step multiplies the loss by `loss_scale`
(`scale_loss`; `initial_scale`, 2^15, at first) so that small float16 gradients do not flush to
zero, and the update divides the summed gradients by it. A step whose summed gradients are not
all finite is an overflow: it is skipped (weights, slots and `iterations` untouched; it counts
in `skipped_steps`, so in `steps_taken`) and the scale halves; after `growth_interval` (2000)
finite steps in a row the scale doubles. The decision is taken on the summed gradients, the
same on every replica and worker, so all take it alike. Only a non-finite gradient at the
smallest scale, 1, is noted as divergence (`first_nonfinite_step`): there no scaling is left
to blame.

What cuts across optimizers (clipping, weight decay, weight EMA) is not written here but in
`Transform`s (transform.py), each in a file of its own and passed as `transforms=`, as Optax
chains its gradient transformations: base.py calls their hooks at fixed points of the update
and keeps their state mirrored, so no transform meets `tf.distribute` itself.

A subclass defined with `flag_name="..."` becomes a `--optimizer` choice (`REGISTRY`).

Assigning to a mirrored variable straight from replica context raises no error but lets the
copies drift apart when replicas see different data; steps 1-3 are what prevents that. Without a
strategy the default one runs the very same code with one replica.
"""

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence

import tensorflow as tf

from trainer import choices
from trainer.choices import INITIAL_LOSS_SCALE, LOSS_SCALE_GROWTH_INTERVAL
from trainer.optimizers.transform import Transform, slot_base_name

LearningRate = float | tf.Tensor | Callable[[tf.Tensor], tf.Tensor]

MIN_LOSS_SCALE = 1.0

# Flag name -> Optimizer subclass, filled as the subclasses are defined (see __init_subclass__).
REGISTRY: dict[str, type["Optimizer"]] = {}
# Constructor keywords given apart from an optimizer's settings.
_NOT_SETTINGS = ("learning_rate", "name", "transforms")


def settings_of(optimizer_class: type) -> tuple[str, ...]:
    """The keyword settings `optimizer_class` takes (beyond the learning rate)."""
    parameters = inspect.signature(optimizer_class).parameters.values()
    return tuple(
        p.name
        for p in parameters
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in _NOT_SETTINGS
    )


def _check_listed(flag_name: str, optimizer_class: type) -> None:
    """Raises TypeError unless trainer/choices.py lists the optimizer with the trainer's
    settings its constructor takes: the config checks flags by that list alone."""
    takes = tuple(s for s in choices.OPTIMIZER_SETTINGS if s in settings_of(optimizer_class))
    listed = choices.OPTIMIZERS.get(flag_name)
    if listed is None or set(listed) != set(takes):
        raise TypeError(
            f"optimizer {flag_name!r}: trainer/choices.py's OPTIMIZERS must hold "
            f"{flag_name!r}: {takes!r} (it has {listed!r}), the settings of "
            f"{', '.join(choices.OPTIMIZER_SETTINGS)} that {optimizer_class.__name__} takes"
        )


@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
    """Dynamic loss scaling's settings: the scale to start from, and the finite steps in a row
    after which it doubles (PyTorch's GradScaler: init_scale, growth_interval; Keras's
    LossScaleOptimizer: initial_scale, dynamic_growth_steps)."""

    initial_scale: float = INITIAL_LOSS_SCALE
    growth_interval: int = LOSS_SCALE_GROWTH_INTERVAL

    def __post_init__(self):
        if not (math.isfinite(self.initial_scale) and self.initial_scale > 0):
            raise ValueError(
                "loss scaling: initial_scale must be positive and finite, "
                f"got {self.initial_scale!r}"
            )
        if self.growth_interval < 1:
            raise ValueError(
                f"loss scaling: growth_interval must be at least 1, got {self.growth_interval!r}"
            )


class Optimizer(tf.Module):
    """Base class: explicit per-variable state, updated once per synchronous step."""

    # Names of the per-variable state tensors `update_step` receives, in order.
    slot_names: tuple[str, ...] = ()
    # Whether the rule moves each element of a vector by its own values alone; False where a
    # norm or mean over the variable enters it (LAMB, Adafactor), so the convergence suite gives
    # each of their runs a variable of its own.
    elementwise: bool = True

    def __init_subclass__(cls, flag_name: str | None = None, **kwargs):
        """`class RMSprop(Optimizer, flag_name="rmsprop")` makes it `--optimizer=rmsprop`."""
        super().__init_subclass__(**kwargs)
        if flag_name is not None:
            if flag_name in REGISTRY:
                raise ValueError(f"optimizer name {flag_name!r} is taken by {REGISTRY[flag_name]}")
            _check_listed(flag_name, cls)
            REGISTRY[flag_name] = cls

    def __init__(
        self,
        learning_rate: LearningRate,
        name: str,
        xla_update: bool = True,
        loss_scaling: bool | DynamicLossScale = False,
        transforms: Sequence[Transform] = (),
    ):
        """`loss_scaling`: True scales with DynamicLossScale's defaults, or give the settings."""
        super().__init__(name=name)
        if loss_scaling is True:
            loss_scaling = DynamicLossScale()
        if isinstance(learning_rate, (int, float)):  # Checked without starting TensorFlow.
            if not learning_rate > 0:
                raise ValueError(f"{name}: learning_rate must be positive, got {learning_rate!r}")
        elif not callable(learning_rate):
            if tf.reduce_any(tf.convert_to_tensor(learning_rate) <= 0):
                raise ValueError(f"{name}: learning_rate must be positive, got {learning_rate!r}")
        self.learning_rate = learning_rate
        self.iterations = None  # int64 step counter, created by build().
        # 0, or the first step with a NaN/inf gradient, as steps_taken counts it (from 1).
        self.first_nonfinite_step = None
        self.grad_norm = None  # Global norm of the last applied step's summed gradients.
        self.loss_scaling = loss_scaling or None  # Its DynamicLossScale, or None: no scaling.
        # With loss_scaling, built by build(): the scale, the finite steps since it last
        # changed, and the count of steps skipped for an overflow.
        self.loss_scale = self.finite_steps = self.skipped_steps = None
        self.transforms = list(transforms)  # Their hooks run in this order.
        self.slots = []  # slots[i][j]: slot_names_for(variable i)[j].
        self._slot_index = {}  # variable ref -> i; plain ints, so not checkpointed.
        self._update_rule = (
            tf.function(self._rule_and_transforms, jit_compile=True)
            if xla_update
            else self._rule_and_transforms
        )

    @property
    def built(self) -> bool:
        return self.iterations is not None

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Creates the step counter and every slot once, eagerly.

        Call it under the strategy's scope (the trainer does) so the state is mirrored like the
        variables it belongs to; `apply_gradients` builds lazily otherwise.
        """
        if self.built:
            raise RuntimeError(f"{self.name} is already built")
        if not variables:
            raise ValueError(f"{self.name}: no variables to optimize")
        with self.name_scope:
            # ONLY_FIRST_REPLICA: one increment per step, not one per replica.
            self.iterations, self.first_nonfinite_step = (
                tf.Variable(
                    0,
                    dtype=tf.int64,
                    trainable=False,
                    name=name,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
                for name in ("iterations", "first_nonfinite_step")
            )
            self.grad_norm = tf.Variable(
                0.0,
                trainable=False,
                name="grad_norm",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            if self.loss_scaling:
                self.loss_scale = tf.Variable(
                    float(self.loss_scaling.initial_scale),
                    trainable=False,
                    name="loss_scale",
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
                self.finite_steps, self.skipped_steps = (
                    tf.Variable(
                        0,
                        dtype=tf.int64,
                        trainable=False,
                        name=name,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                    )
                    for name in ("finite_steps", "skipped_steps")
                )
            for i, var in enumerate(variables):
                self._slot_index[var.ref()] = i
                self.slots.append(
                    [
                        tf.Variable(
                            tf.zeros(self.slot_shape(var, slot), var.dtype),
                            trainable=False,
                            name=f"{slot_base_name(var)}_{slot}",
                        )
                        for slot in self.slot_names_for(var)
                    ]
                )
            for transform in self.transforms:
                transform.build(variables)
        self.start_from(variables)

    def start_from(self, variables: Sequence[tf.Variable]) -> None:
        """Sets the state that starts from the variables' values rather than from zeros
        (Schedule-Free's z and x): build() ends with it, and a caller that restarts the same
        variables from new values (the convergence suite) zeroes the state and calls it again.
        Nothing, unless the rule keeps such state."""
        return None

    def slot_names_for(self, var: tf.Variable) -> tuple[str, ...]:
        """The slots `var` keeps: `slot_names`, unless the rule depends on the variable."""
        return self.slot_names

    def slot_shape(self, var: tf.Variable, slot: str) -> tf.TensorShape:
        """The shape of `var`'s slot named `slot`: the variable's, unless the rule keeps a
        summary of it (Adafactor's row and column accumulators)."""
        return var.shape

    @property
    def steps_taken(self) -> tf.Tensor:
        """The steps taken, each on a batch: those applied (`iterations`) and, with loss
        scaling, those skipped for an overflow."""
        if not self.loss_scaling:
            return tf.convert_to_tensor(self.iterations)
        return self.iterations + self.skipped_steps

    def scale_loss(self, loss: tf.Tensor) -> tf.Tensor:
        """The loss to differentiate: times the loss scale with loss_scaling, else as it is.

        Call it in the train step, after building (the trainer builds first)."""
        if not self.loss_scaling:
            return loss
        return loss * tf.cast(self.loss_scale, loss.dtype)

    def current_learning_rate(self) -> tf.Tensor:
        """The learning rate of the step about to run (a schedule sees the step count)."""
        if callable(self.learning_rate):
            return tf.convert_to_tensor(self.learning_rate(self.iterations))
        return tf.convert_to_tensor(self.learning_rate)

    def apply_gradients(self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable]):
        """Applies one synchronous update; callable in replica or cross-replica context."""
        grads, variables = list(grads), list(variables)
        if len(grads) != len(variables):
            raise ValueError(f"{self.name}: {len(grads)} gradients for {len(variables)} variables")
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not pairs:
            names = ", ".join(v.name for v in variables) or "none"
            raise ValueError(f"{self.name}: no gradients for any variable ({names})")
        if not self.built:
            # Lazily, for eager use; under a strategy, build() under its scope beforehand.
            with tf.init_scope():
                self.build(variables)

        replica_context = tf.distribute.get_replica_context()
        if replica_context is None:  # Already in cross-replica context.
            return self._update(tf.distribute.get_strategy(), pairs)
        summed = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
        return replica_context.merge_call(
            self._update, args=(list(zip(summed, (v for _, v in pairs))),)
        )

    def _update(self, strategy: tf.distribute.Strategy, pairs):
        learning_rate = self.current_learning_rate()
        step = self.iterations + 1  # The step being applied, counting from 1.
        # This step as steps_taken counts it, read before an overflow adds to skipped_steps.
        taken = self.steps_taken + 1
        grads = [strategy.experimental_local_results(grad)[0] for grad, _ in pairs]
        if self.loss_scaling:
            unscale = 1.0 / self.loss_scale
            at_min_scale = self.loss_scale <= MIN_LOSS_SCALE
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
            grad_norm = tf.linalg.global_norm([g * tf.cast(unscale, g.dtype) for g in grads])
        else:
            unscale = None  # Every step applies.
            # One norm serves both the log and the NaN/inf check: finite iff they all are.
            grad_norm = tf.linalg.global_norm(grads)
            finite = tf.math.is_finite(grad_norm)
        scale = unscale  # What every summed gradient is multiplied by, if anything.
        for transform in self.transforms:  # Clipping: from the norm of the unscaled sum.
            factor = transform.scale_gradients(grad_norm, finite)
            if factor is not None:
                scale = factor if scale is None else scale * factor
        # Without loss scaling a step applies even when not finite (and is reported).
        self.before_updates(step, learning_rate, finite if self.loss_scaling else True)
        for grad, var in pairs:
            index = self._slot_index[var.ref()]
            strategy.extended.update(
                var,
                self._update_one,
                args=(var, grad, learning_rate, step, index, scale, finite),
                group=False,
            )
        seen = self.first_nonfinite_step
        if self.loss_scaling:
            self._update_loss_scale(finite)
            diverged = tf.logical_not(finite) & at_min_scale
            self.iterations.assign(tf.where(finite, step, self.iterations))
            grad_norm = tf.where(finite, grad_norm, self.grad_norm)
        else:
            diverged = tf.logical_not(finite)
            self.iterations.assign(step)
        seen.assign(tf.where(diverged & (seen == 0), taken, seen))
        self.grad_norm.assign(tf.cast(grad_norm, tf.float32))
        return step

    def _update_loss_scale(self, finite: tf.Tensor) -> None:
        """Halve on an overflow (to no less than 1); double after growth_interval finite steps."""
        grow = finite & (self.finite_steps + 1 >= self.loss_scaling.growth_interval)
        scale = self.loss_scale
        self.loss_scale.assign(
            tf.where(
                finite, tf.where(grow, scale * 2.0, scale), tf.maximum(scale / 2.0, MIN_LOSS_SCALE)
            )
        )
        zero = tf.constant(0, tf.int64)
        self.finite_steps.assign(tf.where(finite & ~grow, self.finite_steps + 1, zero))
        self.skipped_steps.assign_add(tf.where(finite, zero, 1))

    def _update_one(self, copy, var, grad, learning_rate, step, index, scale, finite):
        # Runs once per device copy of `var`, with this device's copy of the summed gradient.
        # The compiled rule takes plain variables, so the slots' copies are picked here.
        local = tf.distribute.get_strategy().experimental_local_results
        device = next(i for i, each in enumerate(local(var)) if each is copy)
        slots = [local(slot)[device] for slot in self.slots[index]]
        transform_slots = [
            [local(slot)[device] for slot in transform.slots_of(index)]
            for transform in self.transforms
        ]
        learning_rate = tf.cast(learning_rate, copy.dtype)
        args = (grad, scale, copy, learning_rate, slots, transform_slots, step, index)
        if not self.loss_scaling:  # Every step applies.
            return self._update_rule(*args)

        def apply():
            self._update_rule(*args)
            return tf.constant(True)

        # A skipped step leaves the variable, its slots and the transforms' untouched.
        return tf.cond(finite, apply, lambda: tf.constant(False))

    def _rule_and_transforms(
        self, grad, scale, var, learning_rate, slots, transform_slots, step, index
    ):
        # One variable's whole update, compiled as one program with xla_update.
        if scale is not None:
            grad = grad * tf.cast(scale, grad.dtype)
        for transform, its_slots in zip(self.transforms, transform_slots):
            transform.before_update(index, var, learning_rate, its_slots)
        self.update_rule_for(index)(grad, var, learning_rate, slots, step)
        for transform, its_slots in zip(self.transforms, transform_slots):
            transform.after_update(index, var, its_slots)

    def before_updates(self, step, learning_rate, applies) -> None:
        """Once a step, in cross-replica context, before the variables' updates: where a rule
        keeps state of the whole step rather than of a variable (Schedule-Free's sum of
        weights). `applies`: whether the step applies. Nothing, unless the rule needs it."""
        return None

    def update_rule_for(self, index: int) -> Callable:
        """The rule for the `index`-th variable built: `update_step`, unless the rule depends
        on the variable (Muon's does)."""
        return self.update_step

    def update_step(self, grad, var, learning_rate, slots, step):
        """The update rule: assign to `var` and `slots` from `grad` at `step` (the steps
        applied, this one included: `iterations` + 1). Subclasses define it."""
        raise NotImplementedError
