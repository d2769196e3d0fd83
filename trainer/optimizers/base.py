"""The one place where optimizers meet `tf.distribute`.

A subclass states only its state (`slot_names`) and its math (`update_step`). By default each
variable's `update_step` is compiled by XLA into one fused loop: one pass over the variable,
its gradient and its slots, where op by op Adam makes 16 (they took about 40% of the trainer's
step at batch 128). `jit_compile=False` runs it op by op, rounding exactly as eager mode does,
which the convergence suite needs. Everything a synchronous multi-replica update needs
lives here, following the pattern `tf.distribute` documents and Keras uses:

1. In replica context, sum the gradients across replicas (`all_reduce`).
2. `merge_call` into cross-replica context.
3. `strategy.extended.update` applies `update_step` once per variable, on every device's copy,
   with that device's copy of the slots: every copy sees the same summed gradient and so stays
   identical. The variables' updates are independent, so the executor may run them side by side.
4. Increment the step counter once, keep the norm of the summed gradients for logging, and
   note the first step where that norm is not finite (the summed gradients are the same on
   every replica, so every replica agrees without more traffic).

Assigning to a mirrored variable straight from replica context raises no error but lets the
copies drift apart when replicas see different data; steps 1-3 are what prevents that. Without a
strategy the default one runs the very same code with one replica.
"""

from typing import Callable, Sequence, Union

import tensorflow as tf

LearningRate = Union[float, tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]


class Optimizer(tf.Module):
    """Base class: explicit per-variable state, updated once per synchronous step."""

    # Names of the per-variable state tensors `update_step` receives, in order.
    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: LearningRate, name: str, jit_compile: bool = True):
        super().__init__(name=name)
        if not callable(learning_rate):
            if tf.reduce_any(tf.convert_to_tensor(learning_rate) <= 0):
                raise ValueError(f"{name}: learning_rate must be positive, got {learning_rate!r}")
        self.learning_rate = learning_rate
        self.iterations = None  # int64 step counter, created by build().
        self.first_nonfinite_step = None  # 0, or the first step with a NaN/inf gradient.
        self.grad_norm = None  # Global norm of the last step's summed gradients.
        self.slots = []  # slots[i][j]: slot_names[j] of the i-th variable.
        self._slot_index = {}  # variable ref -> i; plain ints, so not checkpointed.
        self._update_rule = (tf.function(self.update_step, jit_compile=True) if jit_compile
                             else self.update_step)

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
                tf.Variable(0, dtype=tf.int64, trainable=False, name=name,
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                for name in ("iterations", "first_nonfinite_step"))
            self.grad_norm = tf.Variable(
                0.0, trainable=False, name="grad_norm",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            for i, var in enumerate(variables):
                self._slot_index[var.ref()] = i
                base_name = var.name.split(":")[0].replace("/", "_")
                self.slots.append([
                    tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False,
                                name=f"{base_name}_{slot}")
                    for slot in self.slot_names])

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
            self._update, args=(list(zip(summed, (v for _, v in pairs))),))

    def _update(self, strategy: tf.distribute.Strategy, pairs):
        learning_rate = self.current_learning_rate()
        step = self.iterations + 1  # The step being taken, counting from 1.
        # One norm serves both the log and the NaN/inf check: it is finite iff they all are.
        grad_norm = tf.linalg.global_norm(
            [strategy.experimental_local_results(grad)[0] for grad, _ in pairs])
        finite = tf.math.is_finite(grad_norm)
        for grad, var in pairs:
            slots = self.slots[self._slot_index[var.ref()]]
            strategy.extended.update(
                var, self._update_one, args=(var, grad, learning_rate, step, slots), group=False)
        self.iterations.assign(step)
        seen = self.first_nonfinite_step
        seen.assign(tf.where(tf.logical_or(finite, seen > 0), seen, step))
        self.grad_norm.assign(tf.cast(grad_norm, tf.float32))
        return step

    def _update_one(self, copy, var, grad, learning_rate, step, slots):
        # Runs once per device copy of `var`, with this device's copy of the summed gradient.
        # The compiled rule takes plain variables, so the slots' copies are picked here.
        local = tf.distribute.get_strategy().experimental_local_results
        index = next(i for i, each in enumerate(local(var)) if each is copy)
        return self._update_rule(grad, copy, tf.cast(learning_rate, copy.dtype),
                                 [local(slot)[index] for slot in slots], step)

    def update_step(self, grad, var, learning_rate, slots, step):
        """The update rule: assign to `var` and `slots` from `grad` at `step` (counting from
        1). Subclasses define it."""
        raise NotImplementedError
