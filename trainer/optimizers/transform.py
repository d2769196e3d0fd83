"""`Transform`: a piece of every update that is not the optimizer's own rule.

Clipping, decoupled weight decay and a moving average of the weights apply to any optimizer,
so each lives in a file of its own as a `Transform`, passed to an optimizer as `transforms=`
(as Optax chains gradient transformations, and Keras wraps optimizers). The optimizer's base
class (base.py) calls the hooks at fixed points of each synchronous update and is the one
place that meets `tf.distribute`:

1. `scale_gradients`, once a step in cross-replica context, with the global norm of the
   gradients summed across replicas and workers (unscaled under loss scaling): returns a
   factor for every gradient, or None. Clipping; the weight EMA counts its steps here.
2. `before_update`, per variable and per device copy, before the rule. Weight decay.
3. `after_update`, per variable and per device copy, after the rule. Weight EMA.

Hooks 2 and 3 run inside the variable's compiled update, so they fuse with the rule; none of
the three runs on a step skipped for a float16 overflow. State a transform keeps is created in
`build`, which the optimizer calls under the strategy's scope, so it is mirrored like the
weights; per-variable state is returned by `slots_of(index)`, and the base hands each hook
this device's copies.
"""

from collections.abc import Sequence

import tensorflow as tf


class Transform(tf.Module):
    """Does nothing at every hook; a subclass overrides the hooks it needs."""

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Creates this transform's state for the optimizer's `variables`, in their order."""
        return None

    def slots_of(self, index: int) -> Sequence[tf.Variable]:
        """The state kept for the `index`-th variable (mirrored variables)."""
        return ()

    def scale_gradients(self, grad_norm: tf.Tensor, finite: tf.Tensor) -> tf.Tensor | None:
        """A factor on every summed gradient, from their global norm; None leaves them be.
        `finite`: whether this step applies (all gradients finite)."""
        return None

    def before_update(self, index: int, var: tf.Variable, learning_rate, slots) -> None:
        """Runs on one device copy of the `index`-th variable, before the rule."""
        return None

    def after_update(self, index: int, var: tf.Variable, slots) -> None:
        """Runs on one device copy of the `index`-th variable, after the rule."""
        return None


def slot_base_name(var: tf.Variable) -> str:
    """`mlp/dense_0/w:0` -> `mlp_dense_0_w`: the stem of the names of a variable's state."""
    return var.name.split(":")[0].replace("/", "_")


def step_count(name: str) -> tf.Variable:
    """A count of steps kept by a transform, from 0: int64, and mirrored so that one increment a
    step in cross-replica context (`scale_gradients`) counts once, not once per replica."""
    return tf.Variable(
        0,
        dtype=tf.int64,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
