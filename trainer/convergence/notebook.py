"""The seed notebook's convergence test, eagerly, with the notebook's own optimizer classes.

TensorFlow's "Optimizers with Core APIs" guide (site/en/guide/core/optimizers_core.ipynb) is the
specification the compiled suite (trainer/convergence/suite.py) must match bit for bit: its
convergence test stops when an update leaves x unchanged in float32, so every rounding step
counts. The classes and the loop below keep the notebook's arithmetic on purpose, including what
STYLE.md warns against elsewhere (Momentum's one `change` shared by every variable, Adam's moments
rebound to tensors and its Python-float step `t`): they are the reference, not an example. Only
the printing is gone; a run returns what it found instead. The loss and its tape gradient are the
notebook's too and live in trainer/convergence/suite.py, where the compiled suite uses them.

It is also the baseline `make bench` times the compiled suite against.
"""

import numpy as np
import tensorflow as tf

from trainer.convergence.suite import CONVERGED, EXCEEDED, EXPLODED, RunResult, grad, loss


class GradientDescent(tf.Module):
    def __init__(self, learning_rate=1e-3):
        self.learning_rate = learning_rate

    def apply_gradients(self, grads, vars):
        for grad_, var in zip(grads, vars):
            var.assign_sub(self.learning_rate * grad_)


class Momentum(tf.Module):
    def __init__(self, learning_rate=1e-3, momentum=0.7):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.change = 0.0

    def apply_gradients(self, grads, vars):
        for grad_, var in zip(grads, vars):
            curr_change = self.learning_rate * grad_ + self.momentum * self.change
            var.assign_sub(curr_change)
            self.change = curr_change


class Adam(tf.Module):
    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, ep=1e-7):
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.learning_rate = learning_rate
        self.ep = ep
        self.t = 1.0
        self.v_dvar, self.s_dvar = [], []
        self.built = False

    def apply_gradients(self, grads, vars):
        if not self.built:
            for var in vars:
                self.v_dvar.append(tf.Variable(tf.zeros(shape=var.shape)))
                self.s_dvar.append(tf.Variable(tf.zeros(shape=var.shape)))
            self.built = True
        for i, (d_var, var) in enumerate(zip(grads, vars)):
            self.v_dvar[i] = self.beta_1 * self.v_dvar[i] + (1 - self.beta_1) * d_var
            self.s_dvar[i] = self.beta_2 * self.s_dvar[i] + (1 - self.beta_2) * tf.square(d_var)
            v_dvar_bc = self.v_dvar[i] / (1 - (self.beta_1**self.t))
            s_dvar_bc = self.s_dvar[i] / (1 - (self.beta_2**self.t))
            var.assign_sub(self.learning_rate * (v_dvar_bc / (tf.sqrt(s_dvar_bc) + self.ep)))
        self.t += 1.0


# The project's short names (trainer.optimizers.OPTIMIZERS) for the notebook's classes.
OPTIMIZERS = {"gd": GradientDescent, "momentum": Momentum, "adam": Adam}


def convergence_test(optimizer, loss_fn=loss, grad_fn=grad, init_val=2.0, max_iters=2000):
    """The notebook's loop: one eager step per iteration, x compared exactly after each update."""
    x_star = tf.Variable(init_val)
    param_path = []
    for iter in range(1, max_iters + 1):
        x_grad = grad_fn(loss_fn, x_star)
        if tf.math.is_nan(x_grad):
            return RunResult(EXPLODED, iter, np.array(param_path, np.float32))
        x_old = x_star.numpy()
        optimizer.apply_gradients([x_grad], [x_star])
        param_path.append(x_star.numpy())
        if x_star == x_old:
            return RunResult(CONVERGED, iter, np.array(param_path, np.float32))
    return RunResult(EXCEEDED, max_iters, np.array(param_path, np.float32))


def run_suite(optimizers, learning_rates, init_val=2.0, max_iters=2000):
    """Every (optimizer, learning rate) run, one after another: {(name, lr): RunResult}."""
    return {
        (name, lr): convergence_test(
            OPTIMIZERS[name](learning_rate=lr), init_val=init_val, max_iters=max_iters
        )
        for name in optimizers
        for lr in learning_rates
    }
