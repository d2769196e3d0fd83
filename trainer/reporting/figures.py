"""Matplotlib figures without pyplot, for PNG files and TensorBoard images.

Figures are made on the Agg canvas: no display, no global figure state, nothing to close, and
the same pixels in a PNG file and in TensorBoard.
"""

import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float]) -> Figure:
    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def pixels(figure: Figure, png_path: str | None = None) -> np.ndarray:
    """The figure as [H, W, 4] floats in [0, 1], read off the canvas it was drawn on (no PNG
    round trip: the grid of every epoch costs a draw, nothing more); also written as a PNG
    file, the same pixels, if a path is given."""
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    if png_path:
        matplotlib.image.imsave(png_path, rgba)
    return rgba.astype(np.float32) / 255.0
