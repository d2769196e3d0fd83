"""Clipping by the global norm of the gradients summed across replicas and workers."""

import tensorflow as tf

from trainer.optimizers.transform import Transform, step_count


class ClipByGlobalNorm(Transform):
    """Scales every gradient by min(1, clip_norm / global_norm), as `tf.clip_by_global_norm`.

    The norm is that of the gradients summed across every replica and worker, unscaled under
    loss scaling: clipping each replica's gradient before the sum (tensorflow#33929) clips a
    different vector, and clips more often the more replicas share the batch. The optimizer's
    `grad_norm` stays the norm before clipping; `clipped_steps` counts the applied steps that
    were clipped.
    """

    def __init__(self, clip_norm: float, name: str = "clip_by_global_norm"):
        super().__init__(name=name)
        if not clip_norm > 0:
            raise ValueError(f"{name}: clip_norm must be positive, got {clip_norm!r}")
        self.clip_norm = float(clip_norm)
        self.clipped_steps = None

    def build(self, variables):
        with self.name_scope:
            self.clipped_steps = step_count("clipped_steps")

    def scale_gradients(self, grad_norm, finite):
        clipped = finite & (grad_norm > self.clip_norm)
        self.clipped_steps.assign_add(tf.cast(clipped, tf.int64))
        # tf.clip_by_global_norm's own factor, so that the two agree to the last bit.
        clip_norm = tf.constant(self.clip_norm, grad_norm.dtype)
        return clip_norm * tf.minimum(1.0 / grad_norm, 1.0 / clip_norm)
