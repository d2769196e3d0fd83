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
    figure = new_figure((2 * columns, 2.2 * rows))
    for place, index in enumerate(wrong):
        ax = figure.add_subplot(rows, columns, place + 1)
        ax.imshow(images[index], cmap="gray_r")
        ax.set_title(f"predicted {predicted[index]}, true {labels[index]}", fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    return pixels(figure)
