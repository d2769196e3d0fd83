"""The bundled MNIST files, the sources, and the input pipelines."""

import gzip
import pathlib
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from data import build_mnist, mnist
from launch.ports import free_ports
from tests.toolkit import environment, run_module
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.run import files, training_data


@pytest.fixture(scope="module")
def bundled():
    return mnist.load("bundled")


def test_shipped_files_match_their_published_sums():
    assert build_mnist.verify() == []


def test_bundled_splits_follow_the_core_api_tutorial(bundled):
    assert bundled.source == "bundled"
    assert (len(bundled.train), len(bundled.validation), len(bundled.test)) == (
        50_000,
        10_000,
        10_000,
    )
    assert bundled.train.images.shape[1:] == (28, 28) and bundled.train.images.dtype == np.uint8
    # Every digit is present in every split, roughly a tenth each.
    for split in (bundled.train, bundled.validation, bundled.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() > 0.08 * len(split) and counts.max() < 0.12 * len(split)
    # The validation images are the first 10,000 of the original training set.
    train_images = mnist._read_idx(build_mnist.DATA_DIR / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(bundled.validation.images, train_images[:10_000])


def test_idx_encoding_round_trips_through_the_reader(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = build_mnist.idx_bytes(array)
    assert raw[:4] == b"\x00\x00\x08\x03"  # Magic: unsigned bytes, 3 dimensions.
    assert np.array_equal(np.frombuffer(raw, np.uint8, offset=16).reshape(2, 3, 4), array)
    # The reader checks each file against its published sum, so the round trip goes through the
    # real files: read, encode again, write, read back. Labels (1 dimension), images (3).
    for name in ("t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        shipped = mnist._read_idx(build_mnist.DATA_DIR / f"{name}.gz")
        with gzip.open(tmp_path / f"{name}.gz", "wb", compresslevel=1) as f:
            f.write(build_mnist.idx_bytes(shipped))
        np.testing.assert_array_equal(mnist._read_idx(tmp_path / f"{name}.gz"), shipped)


def test_a_corrupted_bundled_file_is_named(tmp_path):
    for name in build_mnist.IDX_SHA256:
        shutil.copy(build_mnist.DATA_DIR / f"{name}.gz", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not a gzip file")
    with pytest.raises(mnist.DataError, match="t10k-labels-idx1-ubyte.gz: cannot be read"):
        mnist.load("bundled", bundled_dir=tmp_path)
    assert len(build_mnist.verify(tmp_path)) == 1


def test_auto_uses_the_bundled_copy_when_tfds_is_not_prepared(tmp_path):
    assert mnist.load("auto", data_dir=str(tmp_path)).source == "bundled"


@pytest.fixture
def prepared_tfds(monkeypatch):
    """tfds.testing's random images, standing in for MNIST prepared in TFDS's data_dir."""
    monkeypatch.setattr(mnist, "tfds_is_prepared", lambda data_dir: True)
    with tfds.testing.mock_data(num_examples=12_000):
        yield


@pytest.mark.slow
def test_tfds_source_reads_through_tfds_load(prepared_tfds):
    data = mnist.load("tfds")
    assert data.source == "tfds"
    assert len(data.validation) == 10_000 and len(data.train) == 2_000
    assert data.train.images.shape[1:] == (28, 28) and data.train.labels.dtype == np.int32


@pytest.mark.slow
def test_the_fingerprint_tells_the_sources_apart_and_not_two_loads(bundled, prepared_tfds):
    assert len(bundled.fingerprint) == 16
    assert mnist.load("bundled").fingerprint == bundled.fingerprint
    assert mnist.load("tfds").fingerprint != bundled.fingerprint


@pytest.mark.slow
def test_a_run_resumes_only_on_the_data_it_started_on(tmp_path, bundled, prepared_tfds):
    strategy = strategies.create_strategy("auto", 1)
    files.write_data(str(tmp_path), training_data.record(bundled))
    # TFDS is prepared now, so auto would take it; the run goes on with what it began on.
    assert mnist.load("auto").source == "tfds"
    resumed = training_data.load(TrainConfig(logdir=str(tmp_path)), strategy, str(tmp_path))
    assert resumed.fingerprint == bundled.fingerprint
    with pytest.raises(
        mnist.DataError,
        match=(
            r"^--data_source=tfds: the run in \S+ trained on bundled MNIST \(fingerprint "
            rf"{bundled.fingerprint}\), this is tfds MNIST \(\w+\); resume on the data"
        ),
    ):
        training_data.load(TrainConfig(data_source="tfds"), strategy, str(tmp_path))


@pytest.mark.slow
def test_tfds_without_network_fails_in_one_line_and_leaves_nothing(tmp_path):
    # A proxy that refuses every connection: offline for TFDS and for us, on any machine.
    [closed_port] = free_ports(1)
    started = time.monotonic()
    done = run_module(
        "trainer.train",
        "--data_source=tfds",
        f"--data_dir={tmp_path / 'tfds'}",
        f"--logdir={tmp_path / 'runs'}",
        timeout=120,
        env=environment(HTTPS_PROXY=f"http://127.0.0.1:{closed_port}", NO_PROXY=""),
    )
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        f"trainer.train: error: --data_source=tfds: MNIST is not prepared in {tmp_path / 'tfds'}"
        " and cannot be downloaded (https://storage.googleapis.com/"
    )
    assert time.monotonic() - started < 60  # Not TFDS's minutes of retries.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_download_that_fails_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    def dies_midway(builder, *args, **kwargs):
        partial = pathlib.Path(builder.data_dir).parent / "incomplete.A1B2"
        partial.mkdir(parents=True)
        (partial / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"half")
        (tmp_path / "tfds" / "downloads").mkdir()
        raise ConnectionError("Connection reset by peer\nand more")

    monkeypatch.setattr(mnist, "_unreachable", lambda url: None)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", dies_midway)
    (tmp_path / "tfds").mkdir()
    (tmp_path / "tfds" / "kept.txt").write_text("the user's")
    with pytest.raises(
        mnist.DataError,
        match=r"^--data_source=tfds: downloading MNIST into "
        r"\S+ failed \(Connection reset by peer\); nothing of it was kept$",
    ):
        mnist.load("tfds", data_dir=str(tmp_path / "tfds"))
    assert sorted(p.name for p in (tmp_path / "tfds").iterdir()) == ["kept.txt"]


def test_train_batches_are_a_pure_function_of_seed_and_epoch(bundled):
    def first_batches(seed, first_epoch=0, n=3):
        dataset = mnist.train_dataset(bundled.train, 100, seed, first_epoch)
        return [labels.numpy() for _, labels in dataset.take(n)]

    assert all(np.array_equal(a, b) for a, b in zip(first_batches(1), first_batches(1)))
    assert not np.array_equal(first_batches(1)[0], first_batches(2)[0])
    # Starting at epoch 1 gives what an uninterrupted run sees after epoch 0's 500 batches.
    dataset = mnist.train_dataset(bundled.train, 100, seed=1)
    epoch_1 = [labels.numpy() for _, labels in dataset.skip(500).take(3)]
    assert all(np.array_equal(a, b) for a, b in zip(epoch_1, first_batches(1, first_epoch=1)))


def test_an_epoch_of_the_train_pipeline_visits_each_example_once(bundled):
    # The bundled training split, each image replaced by its index (in its first two pixels),
    # so that a batch tells which examples it holds.
    count = len(bundled.train)
    index_images = np.zeros((count, 28, 28), np.uint8)
    index_images[:, 0, 0], index_images[:, 0, 1] = np.arange(count) % 256, np.arange(count) // 256
    split = mnist.Split(index_images, bundled.train.labels)
    batch_size = 500  # 100 whole batches an epoch.

    def epoch(first_epoch):
        batches = mnist.train_dataset(split, batch_size, seed=0, first_epoch=first_epoch)
        indices, labels = [], []
        for images, batch_labels in batches.take(count // batch_size):
            pixels = np.rint(images.numpy()[:, :2] * 255).astype(np.int64)
            indices.append(pixels[:, 0] + 256 * pixels[:, 1])
            labels.append(batch_labels.numpy())
        return np.concatenate(indices), np.concatenate(labels)

    indices, labels = epoch(0)
    assert sorted(indices) == list(range(count))
    np.testing.assert_array_equal(labels, bundled.train.labels[indices])  # Each with its label.
    assert not np.array_equal(indices, np.arange(count))  # Shuffled,
    assert not np.array_equal(epoch(1)[0], indices)  # and anew each epoch.
    # The order is the epoch's permutation of the examples.
    np.testing.assert_array_equal(
        indices, mnist.epoch_order(count, seed=0, epoch=tf.constant(0)).numpy()
    )
    images, _ = next(iter(mnist.train_dataset(bundled.train, 64, seed=0)))
    assert images.shape == (64, 784) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0


def test_eval_batches_cover_every_example_once_and_pad_with_weight_zero(bundled):
    batches = list(mnist.eval_dataset(bundled.test, 3_000))
    assert len(batches) == 4 and all(images.shape == (3_000, 784) for images, _, _ in batches)
    weights = np.concatenate([w.numpy() for _, _, w in batches])
    labels = np.concatenate([y.numpy() for _, y, _ in batches])
    assert weights.sum() == 10_000 and (weights[10_000:] == 0).all()
    np.testing.assert_array_equal(labels[:10_000], bundled.test.labels)
