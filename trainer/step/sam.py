"""Sharpness-aware minimization (Foret et al., "Sharpness-Aware Minimization for Efficiently
Improving Generalization", 2021): each update takes the gradient at the worst nearby weights.

    g = the gradient at w;  e = rho * g / ||g||;  the update's gradient: the gradient at w + e

The perturbed weights are never written: the second pass computes at w + e through the model's
`offsets`, so a checkpoint, the EMA or an export can only ever see w, and a step cut short
leaves nothing to undo. Two modes, as the literature uses them:

- `global`: g is the whole global batch's gradient, summed across replicas and workers first
  (a second all-reduce), so every replica perturbs by the same e, as one device would;
- `per_replica`: each replica perturbs by its own share's gradient (the paper's m-sharpness,
  m the per-replica batch), and only the final gradients are summed.
"""

from collections.abc import Callable, Sequence

import tensorflow as tf

from trainer.choices import SAM_MODES

# Added to ||g||: the gradients are float32 whatever the compute precision, so it survives.
EPSILON = 1e-12

Gradients = list[tf.Tensor]


def sam_gradients(
    gradients_at: Callable[[Sequence[tf.Tensor] | None], Gradients],
    rho: float,
    mode: str,
    unscale: tf.Tensor | None = None,
) -> Gradients:
    """The gradient at w + e, from `gradients_at(offsets)`: the gradients at w plus `offsets`
    (None: at w). `unscale` undoes a loss scale in the gradients, for the perturbation only:
    the gradients returned are scaled as `gradients_at`'s are. Runs in replica context."""
    if mode not in SAM_MODES:
        raise ValueError(f"unknown SAM mode {mode!r}; choose one of {', '.join(SAM_MODES)}")
    grads = gradients_at(None)
    if unscale is not None:
        grads = [grad * tf.cast(unscale, grad.dtype) for grad in grads]
    if mode == "global":
        grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(grads)
    return gradients_at([rho * grad / (norm + EPSILON) for grad in grads])
