"""SavedModel export: a serving module that returns class probabilities."""

import os

import tensorflow as tf
from absl import logging

from data.mnist import IMAGE_SHAPE, NUM_PIXELS, to_features
from trainer.run import disk


class Classifier(tf.Module):
    """Wraps a logits model with two serving signatures.

    serving_default: `images`, uint8 [batch, 28, 28] -> `probabilities` [batch, 10].
    classify_pixels: `pixels`, float32 [batch, 784] in [0, 1] -> `probabilities`.
    """

    def __init__(self, model: tf.Module):
        super().__init__(name="classifier")
        self.model = model

    @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="images")])
    def classify_images(self, images):
        return self.classify_pixels(to_features(images))

    @tf.function(input_signature=[tf.TensorSpec([None, NUM_PIXELS], tf.float32, name="pixels")])
    def classify_pixels(self, pixels):
        return {"probabilities": tf.nn.softmax(self.model(pixels))}


def export(model: tf.Module, directory: str) -> str:
    """Writes a SavedModel to `directory`, which must not exist yet (nothing is overwritten).

    The SavedModel is written beside it, into `.<name>.partial`, and renamed into place once
    complete: a job killed mid-export leaves no half export under the final name, only a
    partial one that the next export replaces. On a full disk, or another fault of the
    filesystem, the partial one is removed and WriteError raised (trainer/run/disk.py).
    """
    directory = os.fspath(directory)
    if tf.io.gfile.exists(directory):
        raise FileExistsError(f"{directory}: an export is already there; not overwriting it")
    parent, name = os.path.split(os.path.normpath(directory))
    partial = os.path.join(parent, f".{name}.partial")
    disk.remove(partial)  # Left by a job killed mid-export.
    classifier = Classifier(model)
    with disk.writing(
        parent, f"exporting the SavedModel {name}", undo=lambda: disk.remove(partial)
    ):
        tf.saved_model.save(
            classifier,
            partial,
            signatures={
                "serving_default": classifier.classify_images,
                "classify_pixels": classifier.classify_pixels,
            },
        )
        tf.io.gfile.rename(partial, directory)
    return directory


def export_once(model: tf.Module, export_dir: str) -> None:
    """Exports the SavedModel, unless a rerun of a finished run finds it there already."""
    if os.path.exists(export_dir):
        logging.info(
            "export for step %s already in %s; kept as it is",
            os.path.basename(export_dir),
            export_dir,
        )
    else:
        export(model, export_dir)
        logging.info("exported SavedModel to %s", export_dir)
