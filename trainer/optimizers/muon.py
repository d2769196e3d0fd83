"""Muon: momentum orthogonalized by Newton-Schulz iterations, AdamW for the rest."""

import re
from collections.abc import Sequence

import tensorflow as tf

from trainer.choices import MUON_SCALES
from trainer.optimizers.adam import adam_update, check_betas
from trainer.optimizers.base import LearningRate, Optimizer
from trainer.optimizers.weight_decay import DecoupledWeightDecay


def orthogonalize(x: tf.Tensor, steps: int, a: float, b: float, c: float) -> tf.Tensor:
    """Newton-Schulz's quintic iteration towards U V^T of x = U S V^T (an approximation,
    U S' V^T, that Muon's authors found trains as well), on the wide orientation of x."""
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = tf.transpose(x)
    x = x / (tf.norm(x) + 1e-7)  # Frobenius norm: the spectral norm is then at most 1.
    for _ in range(steps):
        gram = x @ tf.transpose(x)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return tf.transpose(x) if tall else x


def update_scale(shape: tf.TensorShape, muon_scale: str, rms_rate: float | None) -> float:
    """The factor on the orthogonalized update of a [in, out] kernel of `shape`.

    "moonlight": sqrt(max(in, out)) * rms_rate (1 with rms_rate None), as Keras: the update's
    RMS is then about rms_rate, AdamW's, so Muon shares AdamW's learning rate and weight decay.
    "spectral": sqrt(max(1, out / in)), the rule of Muon's author for PyTorch's (out, in)
    weights, here on the transposed shape: the update's spectral norm is about
    sqrt(max(1, fan_out / fan_in)), whatever the size of the matrix.
    """
    fan_in, fan_out = shape
    if muon_scale == "spectral":
        return max(1.0, fan_out / fan_in) ** 0.5
    return 1.0 if rms_rate is None else max(fan_in, fan_out) ** 0.5 * rms_rate


class Muon(Optimizer, flag_name="muon"):
    """keras.optimizers.Muon (Keras 3.15), as a plain tf.Module, with its defaults.

    Every 2-D variable whose name matches none of `exclude_layers` (regular expressions, as
    Keras's) takes the Muon rule:

        m <- momentum * m + g;   u <- g + momentum * m (nesterov) or m
        x <- x - lr * orthogonalize(u) * update_scale(x.shape, muon_scale, rms_rate)

    the last factor being, with `muon_scale="moonlight"` (Keras's), Moonlight's adjustment
    sqrt(max(rows, cols)) * rms_rate (Liu et al. 2025; rms_rate=None drops it), which lets Muon
    share AdamW's learning rate and weight decay; with "spectral", the author's
    sqrt(max(1, out / in)) (Jordan et al. 2024), which his rates (~0.02) go with. Every other
    variable (biases, and the excluded layers: the output layer, as Keras advises) takes AdamW
    with `adam_lr_ratio * lr`, epsilon where Keras puts it (the paper's ε̂). Decoupled weight
    decay applies to every variable (Keras's rule) unless `decays` says otherwise:
    `weight_decay` to the Muon variables, `adam_weight_decay` (by default the same) to the rest.

    The Newton-Schulz matmuls run in each variable's compiled update, once per device copy, on
    the gradient summed across replicas: every copy computes the same update.

    References: Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024;
    Liu et al., "Muon is Scalable for LLM Training", 2025.
    """

    def __init__(
        self,
        learning_rate: LearningRate = 1e-3,
        adam_beta_1: float = 0.9,
        adam_beta_2: float = 0.999,
        adam_weight_decay: float | None = None,
        epsilon: float = 1e-7,
        weight_decay: float = 0.004,
        exclude_layers: Sequence[str] = (),
        muon_a: float = 3.4445,
        muon_b: float = -4.7750,
        muon_c: float = 2.0315,
        adam_lr_ratio: float = 1.0,
        momentum: float = 0.95,
        ns_steps: int = 5,
        nesterov: bool = True,
        rms_rate: float | None = 0.2,
        muon_scale: str = "moonlight",
        decays=lambda var: True,
        name: str = "muon",
        transforms=(),
        **kwargs,
    ):
        check_betas(name, adam_beta_1=adam_beta_1, adam_beta_2=adam_beta_2, momentum=momentum)
        if ns_steps < 1:
            raise ValueError(f"{name}: ns_steps must be at least 1, got {ns_steps!r}")
        if muon_scale not in MUON_SCALES:
            raise ValueError(
                f"{name}: muon_scale must be one of {', '.join(MUON_SCALES)}, got {muon_scale!r}"
            )
        self.exclude_layers = [re.compile(pattern) for pattern in exclude_layers]
        adam_weight_decay = weight_decay if adam_weight_decay is None else adam_weight_decay
        decay = [
            DecoupledWeightDecay(
                weight_decay, lambda var: decays(var) and self.takes_muon(var), f"{name}_decay"
            ),
            DecoupledWeightDecay(
                adam_weight_decay,
                lambda var: decays(var) and not self.takes_muon(var),
                f"{name}_adam_decay",
            ),
        ]
        super().__init__(learning_rate, name, transforms=(*decay, *transforms), **kwargs)
        self.adam_beta_1, self.adam_beta_2, self.epsilon = adam_beta_1, adam_beta_2, epsilon
        self.weight_decay, self.adam_weight_decay = weight_decay, adam_weight_decay
        self.muon_abc, self.adam_lr_ratio = (muon_a, muon_b, muon_c), adam_lr_ratio
        self.momentum, self.ns_steps, self.nesterov = momentum, ns_steps, nesterov
        self.rms_rate, self.muon_scale = rms_rate, muon_scale
        self._rules = []  # Per variable: its update rule, picked at build.

    def takes_muon(self, var: tf.Variable) -> bool:
        """2-D and not excluded: the Muon rule; else AdamW."""
        return var.shape.rank == 2 and not any(p.search(var.name) for p in self.exclude_layers)

    def slot_names_for(self, var):
        return ("momentum",) if self.takes_muon(var) else ("momentum", "velocity")

    def build(self, variables):
        super().build(variables)
        self._rules = [
            self._muon_step if self.takes_muon(var) else self._adamw_step for var in variables
        ]

    def update_rule_for(self, index):
        return self._rules[index]

    def _muon_step(self, grad, var, learning_rate, slots, step):
        (m,) = slots
        m.assign(self.momentum * m + grad)
        direction = grad + self.momentum * m if self.nesterov else m
        update = learning_rate * orthogonalize(direction, self.ns_steps, *self.muon_abc)
        var.assign_sub(update * update_scale(var.shape, self.muon_scale, self.rms_rate))

    def _adamw_step(self, grad, var, learning_rate, slots, step):
        m, v = slots
        adam_update(
            grad,
            var,
            learning_rate * self.adam_lr_ratio,
            m,
            v,
            step,
            self.adam_beta_1,
            self.adam_beta_2,
            self.epsilon,
            epsilon_hat=True,
        )
