"""A tiny TensorBoard writer: `write_scalars(step, {name: value})` and friends.

Only the chief writes; on other workers every call is a no-op, so callers never branch on it.

A full disk, as tf.summary meets it: events are queued and written out by a write that
overflows the queue of 10, or by `flush`, which `as_default` calls on leaving, so each of our
calls is on disk as it returns. Bytes still in the file's buffer when it is flushed raise
ResourceExhaustedError (at a write, a flush or a close); a large event (the graph, an image)
goes past the buffer and fails in silence (TensorFlow's EventsWriter drops that write's
error), leaving part of an event at the file's end, which `summary_iterator` refuses. So each
call checks that the file ends on a whole event; if not, or on the error, the file is cut back
to the end of the last whole call and closed, and DiskFullError raised (trainer/run/disk.py);
so on any other fault of the filesystem (an I/O error, a permission denied). Nothing is left to
flush then, nor after a call that succeeded, so closing every writer as the
process leaves (trainer/common/exiting.py) writes nothing.
"""

import contextlib
import errno
import glob
import os
import struct
import weakref
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.common import exiting
from trainer.run import disk


def _event_files(logdir: str) -> set[str]:
    return set(glob.glob(os.path.join(glob.escape(logdir), "events.out.tfevents.*")))


def _whole_events_end(path: str, start: int) -> int:
    """The events file's size, checked to end on a whole event (a TFRecord: length, its CRC,
    data, the data's CRC) by walking the records from `start`, where one begins. A partial
    event is a write that did not fit: OSError ENOSPC on a full filesystem, else EIO."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        end = start
        while end + 8 <= size:
            f.seek(end)
            end += 8 + 4 + struct.unpack("<Q", f.read(8))[0] + 4
    if end != size:
        code = errno.ENOSPC if os.statvfs(path).f_bavail == 0 else errno.EIO
        raise OSError(code, f"{os.strerror(code)}: part of an event at its end", path)
    return size


class MetricsWriter:
    """Writes tf.summary events under one run directory."""

    # Every writer not closed yet, for close_all() when the process leaves without Python's
    # teardown (trainer/common/exiting.py), e.g. on an error that left a run's writer open.
    _open = weakref.WeakSet()

    def __init__(self, logdir: str, is_chief: bool = True):
        self.logdir = logdir
        self.is_chief = is_chief
        self._graph_written = False
        self._path = None  # Our events file, and its size after the last whole write.
        self._whole_size = 0
        if not is_chief:
            self._writer = tf.summary.create_noop_writer()
        else:
            before = _event_files(logdir)

            def remove_new_file():  # Empty: creating it wrote nothing.
                for path in _event_files(logdir) - before:
                    disk.remove(path)

            with disk.writing(logdir, "starting a TensorBoard events file", remove_new_file):
                self._writer = tf.summary.create_file_writer(logdir)
            self._path = min(_event_files(logdir) - before, default=None)
            self._whole_size = os.path.getsize(self._path) if self._path else 0
        MetricsWriter._open.add(self)

    @contextlib.contextmanager
    def _writing(self, step: int | None = None):
        """Writes the block's summaries at `step`; on a full disk, none of them."""
        with disk.writing(self.logdir, "writing TensorBoard events", self._cut_back):
            if step is None:
                yield
            else:
                with self._writer.as_default(step=step):
                    yield
            if self._path:
                self._whole_size = _whole_events_end(self._path, self._whole_size)

    def _cut_back(self) -> None:
        """Closes the writer and cuts its file back to its last whole event."""
        try:
            self._writer.close()
        except tf.errors.OpError:
            pass  # The same fault (a full disk), flushing the events being dropped.
        MetricsWriter._open.discard(self)
        if self._path:
            os.truncate(self._path, self._whole_size)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        with self._writing(step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    def write_histograms(self, step: int, values: Mapping[str, tf.Tensor]) -> None:
        with self._writing(step):
            for name, value in values.items():
                tf.summary.histogram(name, value)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Images as uint8 or [0, 1] float arrays of shape [N, H, W, C] (or one [H, W, C])."""
        with self._writing(step):
            for name, image in images.items():
                image = np.asarray(image)
                if image.ndim == 3:
                    image = image[None]
                tf.summary.image(name, image, max_outputs=len(image))

    def write_text(self, step: int, texts: Mapping[str, str]) -> None:
        with self._writing(step):
            for name, text in texts.items():
                tf.summary.text(name, text)

    def write_graph_trace(self, step: int, name: str) -> None:
        """Exports the graphs traced since `tf.summary.trace_on(graph=True)`, once."""
        if self._graph_written:
            return
        with self._writing(step):
            tf.summary.trace_export(name)
        self._graph_written = True

    def flush(self) -> None:
        with self._writing():
            self._writer.flush()

    def close(self) -> None:
        with self._writing():
            self._writer.close()
        MetricsWriter._open.discard(self)

    @classmethod
    def close_all(cls) -> None:
        """Flushes and closes every writer still open. As the process leaves, its exit code
        decided, a full disk or another fault of the filesystem is a warning (a line, not a
        traceback)."""
        for writer in list(cls._open):
            try:
                writer.close()
            except disk.WriteError as e:
                logging.warning("%s", e)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# A process that ends through exiting.leave skips Python's teardown: its writers close there.
exiting.close_before_exit(MetricsWriter.close_all)
