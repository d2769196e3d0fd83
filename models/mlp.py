"""A multilayer perceptron from TensorFlow Core APIs: `tf.Module` dense layers, no Keras.

The model knows nothing of devices or strategies: the trainer creates it under a strategy's
scope, which is all it takes to mirror its variables.
"""

from collections.abc import Sequence

import tensorflow as tf

Offsets = dict  # Variable ref -> the tensor to add to that variable's value.


def glorot_uniform(shape: Sequence[int], seed: tf.Tensor) -> tf.Tensor:
    """Xavier/Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)).

    Stateless, so the same seed gives the same weights whatever ran before.
    """
    fan_in, fan_out = shape
    limit = tf.sqrt(6.0 / tf.cast(fan_in + fan_out, tf.float32))
    return tf.random.stateless_uniform(shape, seed=seed, minval=-limit, maxval=limit)


class Dense(tf.Module):
    """y = activation(x @ w + b) with Glorot-uniform `w` and zero `b`.

    The variables are float32; the layer computes in `compute_dtype`, casting its weights on the
    way in (mixed precision: the casts' gradients come back as float32 for the optimizer).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        seed: tf.Tensor,
        activation=tf.identity,
        compute_dtype: tf.DType = tf.float32,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.activation, self.compute_dtype = activation, compute_dtype
        with self.name_scope:
            self.w = tf.Variable(glorot_uniform([in_features, out_features], seed), name="w")
            self.b = tf.Variable(tf.zeros([out_features]), name="b")

    def __call__(self, x: tf.Tensor, offsets: "Offsets | None" = None) -> tf.Tensor:
        w, b = self.w, self.b
        if offsets:  # Computing at w + offset, without writing to w.
            w, b = w + offsets[w.ref()], b + offsets[b.ref()]
        w, b = (tf.cast(v, self.compute_dtype) for v in (w, b))
        return self.activation(tf.matmul(tf.cast(x, self.compute_dtype), w) + b)


class MLP(tf.Module):
    """ReLU hidden layers and a linear output layer that returns float32 logits.

    `compute_dtype` (float32, bfloat16 or float16) is what the layers compute in; the weights
    stay float32 and the logits come back as float32, so the softmax, the loss and whatever
    reads the logits see float32 whatever the precision.
    """

    def __init__(
        self,
        input_size: int,
        hidden_sizes: Sequence[int],
        num_classes: int,
        seed: int = 0,
        compute_dtype: tf.DType = tf.float32,
        name: str = "mlp",
    ):
        super().__init__(name=name)
        if not hidden_sizes or min(hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be positive integers, got {list(hidden_sizes)}")
        sizes = [input_size, *hidden_sizes, num_classes]
        with self.name_scope:
            self.layers = [
                Dense(
                    fan_in,
                    fan_out,
                    seed=tf.constant([seed, index], tf.int64),
                    activation=tf.nn.relu if index < len(hidden_sizes) else tf.identity,
                    compute_dtype=compute_dtype,
                    name=f"dense_{index}",
                )
                for index, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]))
            ]

    def __call__(self, x: tf.Tensor, offsets: Sequence[tf.Tensor] | None = None) -> tf.Tensor:
        """The logits; with `offsets` (one per trainable variable, in their order), those of
        the weights plus the offsets: sharpness-aware minimization's second pass reads the
        perturbed weights this way, so they are never written."""
        by_variable = None
        if offsets is not None:
            by_variable = {v.ref(): o for v, o in zip(self.trainable_variables, offsets)}
        for layer in self.layers:
            x = layer(x, by_variable)
        return tf.cast(x, tf.float32)
