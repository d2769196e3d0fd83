"""A tiny TensorBoard writer: `write_scalars(step, {name: value})` and friends.

Only the chief writes; on other workers every call is a no-op, so callers never branch on it.
"""

import weakref
from typing import Mapping

import numpy as np
import tensorflow as tf


class MetricsWriter:
    """Writes tf.summary events under one run directory."""

    # Every writer not closed yet, for close_all() when the process leaves without Python's
    # teardown (trainer/exiting.py), e.g. on an error that left a run's writer open.
    _open = weakref.WeakSet()

    def __init__(self, logdir: str, is_chief: bool = True):
        self.logdir = logdir
        self.is_chief = is_chief
        self._writer = (tf.summary.create_file_writer(logdir) if is_chief
                        else tf.summary.create_noop_writer())
        self._graph_written = False
        MetricsWriter._open.add(self)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        with self._writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    def write_histograms(self, step: int, values: Mapping[str, tf.Tensor]) -> None:
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.histogram(name, value)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Images as uint8 or [0, 1] float arrays of shape [N, H, W, C] (or one [H, W, C])."""
        with self._writer.as_default(step=step):
            for name, image in images.items():
                image = np.asarray(image)
                if image.ndim == 3:
                    image = image[None]
                tf.summary.image(name, image, max_outputs=len(image))

    def write_text(self, step: int, texts: Mapping[str, str]) -> None:
        with self._writer.as_default(step=step):
            for name, text in texts.items():
                tf.summary.text(name, text)

    def write_graph_trace(self, step: int, name: str) -> None:
        """Exports the graphs traced since `tf.summary.trace_on(graph=True)`, once."""
        if self._graph_written:
            return
        with self._writer.as_default(step=step):
            tf.summary.trace_export(name)
        self._graph_written = True

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        MetricsWriter._open.discard(self)

    @classmethod
    def close_all(cls) -> None:
        """Flushes and closes every writer still open."""
        for writer in list(cls._open):
            writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
