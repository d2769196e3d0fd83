"""The optimizer convergence suite: the seed notebook's test, compiled, with TensorBoard output.

TensorFlow's "Optimizers with Core APIs" guide starts x at 2.0 on L(x) = 2x^4 + 3x^3 + 2 and
steps each optimizer until an update leaves x exactly unchanged in float32 ("converged"), the
gradient is NaN ("exploded"), or max_iters pass ("exceeded"). It does so one eager step at a time,
one run after another. Here every run moves through one `tf.while_loop` together, and gives the
notebook's results bit for bit (tests/test_convergence.py checks it against an eager copy of the
notebook, trainer/convergence/notebook.py). Exactness shapes three choices below:

* No graph rewrites. Grappler's arithmetic optimizer turns pow(x, 3) into x * square(x), which
  rounds differently from the eager Pow kernel for about a quarter of float32 inputs; XLA
  (jit_compile=True) generates code of its own and moves the paths as well (the tests fail with
  either). With grappler off the graph runs the very kernels eager mode runs, and is still two
  orders of magnitude faster than the eager loop: per op it pays the executor, not Python.
* Few runs per tensor. Runs of one optimizer share a vector variable, one element per learning
  rate, and a vector learning rate: elementwise, the math is the scalar math. But Eigen computes
  Pow over full SIMD packets with a vectorized pow of its own, which rounds differently from the
  scalar libm pow that the notebook's one-element tensors get; a tensor shorter than one packet
  (4 float32 with SSE or NEON, 8 with AVX) takes the scalar path. So a vector holds at most
  _MAX_LANES runs, and more learning rates make more vectors.
* The optimizers are trainer.optimizers' own, stepped through `apply_gradients`, with their
  update rule run op by op (xla_update=False) instead of compiled by XLA as the trainer runs it.
  Their own ops (sqrt, division, sign) are correctly rounded at any vector width: only the loss's
  Pow needs the lane limit.

Each optimizer runs with its defaults but for what OPTIMIZER_SETTINGS gives it, so an optimizer
a user registers in a file of its own (docs/writing-an-optimizer.md) runs here as it is.
"""

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from trainer.common.tables import markdown_table
from trainer.convergence import plots
from trainer.convergence.settings import SETTINGS_FILE, SuiteSettings, check_logdir
from trainer.optimizers import OPTIMIZERS, create
from trainer.reporting.tensorboard import MetricsWriter

CONVERGED, EXCEEDED, EXPLODED = "converged", "exceeded", "exploded"

# Table rows and picture titles; an optimizer without one is titled by its short name.
TITLES = {
    "gd": "gradient descent",
    "momentum": "momentum",
    "adam": "Adam",
    "adamw": "AdamW",
    "lion": "Lion",
    "muon": "Muon",
}


def _decays_x(var: tf.Variable) -> bool:
    """AdamW's mask here: x decays. By default only weight matrices do, and AdamW on a vector of
    runs would be Adam."""
    return True


# What the suite sets beyond an optimizer's defaults (keywords of `create`), by short name.
# AdamW decays x at Keras's (and its own default) rate, stated here so the table does not move
# with the default; its epsilon stays where Adam's is (the paper's Algorithm 1). Lion runs with
# its defaults: no weight decay.
OPTIMIZER_SETTINGS = {"adamw": {"weight_decay": 0.004, "decays": _decays_x}}

# Runs per vector: fewer than the narrowest float32 SIMD packet (see the module docstring).
_MAX_LANES = 3

# Lane states inside the compiled loop; a lane still running at the end exceeded max_iters.
_RUNNING, _CONVERGED, _EXPLODED = 0, 1, 2

# The loss's global minimum and its saddle (the notebook calls it the inflection point).
MINIMUM, SADDLE = -9 / 8, 0.0


def loss(x):
    """The notebook's loss, 2x^4 + 3x^3 + 2: a saddle at 0 on the way from 2 to the minimum."""
    return 2 * (x**4) + 3 * (x**3) + 2


def grad(f, x):
    """The notebook's gradient of f at x, from a tape (x may be a variable or a tensor)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        result = f(x)
    return tape.gradient(result, x)


@dataclasses.dataclass(frozen=True, eq=False)
class RunResult:
    """One run: how it ended, at which iteration, and x after each update (iteration 1 first).

    An exploded run's path stops before the iteration whose gradient was NaN.
    """

    outcome: str
    iteration: int
    path: np.ndarray

    @property
    def final(self) -> float | None:
        """The last x, or None when the run exploded (the notebook keeps no x then)."""
        return None if self.outcome == EXPLODED else float(self.path[-1])

    def describe(self) -> str:
        return {
            CONVERGED: f"converged in {self.iteration} iterations",
            EXCEEDED: f"exceeded {self.iteration}",
            EXPLODED: f"exploded at iteration {self.iteration}",
        }[self.outcome]


Results = dict[tuple[str, float], RunResult]


def run_name(optimizer: str, learning_rate: float) -> str:
    """A run's JSON key and TensorBoard run directory, e.g. adam@0.1."""
    return f"{optimizer}@{learning_rate:g}"


@contextlib.contextmanager
def _without_graph_rewrites():
    """Runs functions exactly as traced: grappler's rewrites change float32 rounding.

    The setting is process-wide (so not for use from several threads at once) and is restored on
    the way out. Every call of the suite's function runs inside, so its graph is always
    instantiated the same way.
    """
    saved = tf.config.optimizer.get_experimental_options()["disable_meta_optimizer"]
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": saved})


class ConvergenceSuite(tf.Module):
    """Every (optimizer, learning rate) run of the convergence test, in one compiled loop.

    Built once for the optimizers and learning rates; each call resets x and the optimizer state
    and runs from `init_val` for up to `max_iters` iterations, without retracing.

    Example:
        suite = ConvergenceSuite(["momentum"], [1e-2])
        suite(init_val=2.0, max_iters=2000)[("momentum", 1e-2)].describe()
        # 'converged in 80 iterations'
    """

    def __init__(self, optimizers: Sequence[str], learning_rates: Sequence[float]):
        super().__init__(name="convergence_suite")
        if not optimizers or not learning_rates:
            raise ValueError("the suite needs at least one optimizer and one learning rate")
        self.lanes = []  # (optimizer, learning rate) of each element of the loop's vectors.
        self._groups = []  # (x, optimizer): up to _MAX_LANES runs of one optimizer.
        for name in optimizers:
            lanes = _MAX_LANES if OPTIMIZERS[name].elementwise else 1  # Else the lanes mix.
            for start in range(0, len(learning_rates), lanes):
                chunk = list(learning_rates[start : start + lanes])
                x = tf.Variable(tf.zeros([len(chunk)]), name=f"x_{name}_{start}")
                optimizer = create(
                    name,
                    tf.constant(chunk, tf.float32),
                    xla_update=False,
                    **OPTIMIZER_SETTINGS.get(name, {}),
                )
                optimizer.build([x])
                self._groups.append((x, optimizer))
                self.lanes += [(name, lr) for lr in chunk]

    @property
    def trace_count(self) -> int:
        return self._run.experimental_get_tracing_count()

    def __call__(self, init_val: float = 2.0, max_iters: int = 2000) -> Results:
        if max_iters < 1:
            raise ValueError(f"max_iters must be at least 1, got {max_iters}")
        with _without_graph_rewrites():
            states, iterations, path = self._run(
                tf.constant(init_val, tf.float32), tf.constant(max_iters, tf.int32)
            )
        states, iterations, path = states.numpy(), iterations.numpy(), path.numpy()
        results = {}
        for lane, key in enumerate(self.lanes):
            state, iteration = states[lane], int(iterations[lane])
            if state == _EXPLODED:
                results[key] = RunResult(EXPLODED, iteration, path[: iteration - 1, lane])
            elif state == _CONVERGED:
                results[key] = RunResult(CONVERGED, iteration, path[:iteration, lane])
            else:
                results[key] = RunResult(EXCEEDED, max_iters, path[:, lane])
        return results

    @tf.function(
        input_signature=[tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)],
        autograph=False,
    )
    def _run(self, init_val, max_iters):
        """Returns each lane's state and final iteration, and x per iteration [iters, lanes]."""
        for x, optimizer in self._groups:
            x.assign(tf.fill(tf.shape(x), init_val))
            # A fresh run starts from the state build() created: zeros (the step count, the
            # slots and whatever else the optimizer keeps), then what starts from x itself.
            for state in optimizer.variables:
                state.assign(tf.zeros_like(state))
            optimizer.start_from([x])

        def keep_going(iteration, states, *_):
            return (iteration <= max_iters) & tf.reduce_any(states == _RUNNING)

        def step(iteration, states, last_iterations, path):
            exploded, converged, xs = [], [], []
            for x, optimizer in self._groups:
                # A lane that exploded keeps stepping on NaN; elementwise math keeps the NaN in
                # its own lane, and its result is already fixed.
                x_grad = grad(loss, x)
                x_old = x.read_value()
                optimizer.apply_gradients([x_grad], [x])
                x_new = x.read_value()
                exploded.append(tf.math.is_nan(x_grad))
                converged.append(x_new == x_old)
                xs.append(x_new)
            running = states == _RUNNING
            outcome = tf.where(
                tf.concat(exploded, 0),
                _EXPLODED,
                tf.where(tf.concat(converged, 0), _CONVERGED, _RUNNING),
            )
            finishing = running & (outcome != _RUNNING)
            return (
                iteration + 1,
                tf.where(running, outcome, states),
                tf.where(finishing, iteration, last_iterations),
                path.write(iteration - 1, tf.concat(xs, 0)),
            )

        lanes = len(self.lanes)
        _, states, last_iterations, path = tf.while_loop(
            keep_going,
            step,
            (
                tf.constant(1),
                tf.fill([lanes], _RUNNING),
                tf.zeros([lanes], tf.int32),
                tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[lanes]),
            ),
        )
        return states, last_iterations, path.stack()


def format_table(results: Results) -> str:
    """The notebook's results as a markdown table: a row per optimizer, a column per rate."""
    optimizers = list(dict.fromkeys(name for name, _ in results))
    learning_rates = list(dict.fromkeys(lr for _, lr in results))
    header = ["optimizer"] + [f"lr {lr:g}" for lr in learning_rates]
    return markdown_table(
        header,
        [
            [TITLES.get(name, name)] + [results[name, lr].describe() for lr in learning_rates]
            for name in optimizers
        ],
    )


def results_json(results: Results) -> dict:
    """{"adam@0.1": {"outcome": ..., "iteration": ..., "final": x or None}, ...}"""
    return {
        run_name(name, lr): {
            "outcome": result.outcome,
            "iteration": result.iteration,
            "final": result.final,
        }
        for (name, lr), result in results.items()
    }


def run_and_report(settings: SuiteSettings, logdir: str) -> Results:
    """Runs the suite and writes to logdir: TensorBoard events and the notebook's pictures.

    Per run, under <logdir>/<optimizer>@<lr>/, x and the loss at every iteration as scalars and
    the outcome as text; in <logdir> itself the pictures (also as PNG files) and the table.
    """
    check_logdir(logdir, settings)
    suite = ConvergenceSuite(settings.optimizers, settings.learning_rates)
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, SETTINGS_FILE), "w") as f:
        json.dump(dataclasses.asdict(settings), f, indent=2)
    results = suite(settings.init_val, settings.max_iters)

    writers = {key: MetricsWriter(os.path.join(logdir, run_name(*key))) for key in results}
    _write_paths(writers, results)
    for key, writer in writers.items():
        writer.write_text(0, {"outcome": results[key].describe()})
        writer.close()
    with MetricsWriter(logdir) as writer:
        for tag, figure in _figures(settings, results).items():
            image = plots.save_png(figure, os.path.join(logdir, tag.replace("/", "_") + ".png"))
            writer.write_images(0, {tag: image})
        writer.write_text(0, {"table": format_table(results)})
    return results


def _write_paths(writers: Mapping[tuple[str, float], MetricsWriter], results: Results) -> None:
    """Writes every run's x and loss per iteration from one compiled function.

    The default suite logs some 22,000 scalars: ~3.5 s as eager summary calls, ~0.5 s compiled
    (tracing included).
    """

    @tf.function(autograph=False)
    def write(paths):
        for key, path in paths.items():
            _write_path(writers[key], path)

    write({key: tf.constant(result.path, tf.float32) for key, result in results.items()})


def _write_path(writer: MetricsWriter, path: tf.Tensor) -> None:
    def write_one(i):
        # Tags take the name scope; the loop's own ("while/") must not prefix them.
        with tf.name_scope(""):
            writer.write_scalars(tf.cast(i + 1, tf.int64), {"x": path[i], "loss": loss(path[i])})
        return i + 1

    tf.while_loop(lambda i: i < tf.shape(path)[0], write_one, [tf.constant(0)])


def _figures(settings: SuiteSettings, results: Results) -> dict:
    """The notebook's pictures, by TensorBoard tag: the loss, and each optimizer's paths."""
    x_vals = np.linspace(-2, 2, 201, dtype=np.float32)
    marks = {
        "Saddle (inflection) point": (SADDLE, loss(SADDLE)),
        "Global minimum": (MINIMUM, loss(MINIMUM)),
    }
    figures = {
        "loss_function": plots.loss_figure(
            x_vals, loss(x_vals), grad(loss, tf.constant(x_vals)).numpy(), marks
        )
    }
    for name in settings.optimizers:
        paths = {}
        for lr in settings.learning_rates:
            result = results[name, lr]
            # As in the notebook an exploded run draws no path: it left the picture long before.
            drawn = result.path if result.outcome != EXPLODED else result.path[:0]
            paths[f"learning rate={lr:g}: {result.describe()}"] = drawn
        figures[f"paths/{name}"] = plots.paths_figure(
            _sentence_case(TITLES.get(name, name)), paths, loss, settings.max_iters
        )
    return figures


def _sentence_case(title: str) -> str:
    return title[:1].upper() + title[1:]
