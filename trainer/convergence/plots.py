"""The seed notebook's pictures of the convergence suite, drawn from numpy arrays."""

import itertools
from collections.abc import Callable, Mapping

import numpy as np
from matplotlib.figure import Figure

from trainer.reporting.figures import new_figure, pixels

# The notebook's figure size, and its path colours (r, w, c) extended for longer sweeps.
_FIGSIZE = (9, 6)
_PATH_COLORS = ("r", "w", "c", "m", "y", "lime", "orange")


def loss_figure(
    x_vals: np.ndarray,
    loss_vals: np.ndarray,
    grad_vals: np.ndarray,
    marks: Mapping[str, tuple[float, float]],
) -> Figure:
    """The loss and its gradient over x, with labelled points (the saddle, the minimum)."""
    figure = new_figure(_FIGSIZE)
    ax = figure.add_subplot()
    ax.plot(x_vals, loss_vals, c="k", label="Loss function")
    ax.plot(x_vals, grad_vals, c="tab:blue", label="Gradient function")
    for (label, (x, y)), color in zip(marks.items(), itertools.cycle(("g", "r"))):
        ax.plot(x, y, marker="o", c=color, label=label)
    ax.legend()
    ax.set_ylim(0, 5)
    ax.set_xlabel("x")
    ax.set_ylabel("loss")
    ax.set_title("Sample loss function and gradient")
    return figure


def paths_figure(
    title: str,
    paths: Mapping[str, np.ndarray],
    loss_fn: Callable[[np.ndarray], np.ndarray],
    max_iters: int,
) -> Figure:
    """x per iteration for each labelled path, over a heat map of log(loss(x)).

    As in the notebook the background spans iterations 1 to max_iters + 100 and x in [-2, 2],
    widened to hold every path; an empty path (an exploded run) is named in the legend only.
    """
    finite = np.concatenate([[-2.0, 2.0]] + [path[np.isfinite(path)] for path in paths.values()])
    low, high = float(finite.min()), float(finite.max())
    x_edges = np.linspace(low, high, 202)
    x_centres = (x_edges[:-1] + x_edges[1:]) / 2
    # log(loss) depends on x only, so one column of cells spans every iteration.
    log_loss = np.log(loss_fn(x_centres.astype(np.float64)))[:, None]

    figure = new_figure(_FIGSIZE)
    ax = figure.add_subplot()
    mesh = ax.pcolormesh([1, max_iters + 100], x_edges, log_loss, vmin=0, shading="flat")
    figure.colorbar(mesh, ax=ax, label="log(loss)")
    for (label, path), color in zip(paths.items(), itertools.cycle(_PATH_COLORS)):
        if len(path):
            ax.plot(np.arange(1, len(path) + 1), path, c=color)
            ax.plot(len(path), path[-1], marker="o", c=color, label=f"x*: {label}")
        else:
            ax.plot([], [], c=color, label=label)
    ax.set_xlabel("Iterations")
    ax.set_ylabel("Parameter value")
    ax.legend()
    ax.set_title(f"{title} parameter paths")
    return figure


def save_png(figure: Figure, path: str) -> np.ndarray:
    """Writes the figure as a PNG file and returns those pixels ([H, W, 4] floats in [0, 1])."""
    return pixels(figure, path)
