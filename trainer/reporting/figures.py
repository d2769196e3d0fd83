"""Matplotlib figures without pyplot, for PNG files and TensorBoard images.

Figures are made on the Agg canvas: no display, no global figure state, nothing to close, and
the same pixels in a PNG file and in TensorBoard.
"""

import io

import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def pixels(figure: Figure, png_path: str | None = None) -> np.ndarray:
    """The figure as [H, W, 4] floats in [0, 1]; also written as a PNG file if a path is given."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    if png_path:
        with open(png_path, "wb") as f:
            f.write(buffer.getvalue())
    buffer.seek(0)
    return matplotlib.image.imread(buffer, format="png")
