"""What TensorBoard shows beyond scalars: weight and optimizer-state histograms, and the digits
the model gets wrong."""

import numpy as np
import tensorflow as tf

from data import mnist
from trainer.optimizers import Optimizer
from trainer.reporting.figures import new_figure, pixels


def state_histograms(model: tf.Module, optimizer: Optimizer) -> dict[str, tf.Tensor]:
    """Every layer's weights and every optimizer slot, by TensorBoard tag."""

    def tag(variable):
        return variable.name.split(":")[0]

    values = {f"weights/{tag(v)}": v for v in model.trainable_variables}
    for slots in optimizer.slots:
        values.update({f"optimizer/{tag(slot)}": slot for slot in slots})
    return values


def misclassified_grid(
    model: tf.Module, split: mnist.Split, max_images: int = 16, scan: int = 2_000
) -> np.ndarray | None:
    """A grid of up to `max_images` digits from the first `scan` of `split` that the model gets
    wrong, each titled with its predicted and true label; None if it gets them all right."""
    images, labels = split.images[:scan], split.labels[:scan]
    predicted = tf.argmax(model(mnist.to_features(images)), axis=-1).numpy()
    wrong = np.flatnonzero(predicted != labels)[:max_images]
    if not len(wrong):
        return None
    columns = 4
    rows = -(-len(wrong) // columns)
    # One image of all the digits, each tile with a blank strip above it for its title: one
    # axes and 16 texts draw in a fraction of the time of 16 axes and a layout pass.
    tiles = np.zeros((rows * columns, *images.shape[1:]), images.dtype)
    tiles[: len(wrong)] = images[wrong]
    height, width = images.shape[1:]
    title_rows, margin = height // 3, 2
    tiles = np.pad(tiles, ((0, 0), (title_rows, margin), (margin, margin)))
    mosaic = (
        tiles.reshape(rows, columns, *tiles.shape[1:])
        .transpose(0, 2, 1, 3)
        .reshape(rows * tiles.shape[1], columns * tiles.shape[2])
    )
    figure = new_figure((2 * columns, 2.2 * rows))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, cmap="gray_r", aspect="auto", interpolation="nearest")
    ax.axis("off")
    for place, index in enumerate(wrong):
        row, column = divmod(place, columns)
        figure.text(
            (column + 0.5) / columns,
            1 - (row + 0.05) / rows,
            f"predicted {predicted[index]}, true {labels[index]}",
            ha="center",
            va="top",
            fontsize=9,
        )
    return pixels(figure)
