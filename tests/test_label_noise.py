"""--label_noise: a seeded fraction of the training labels, and only those, flipped."""

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from data.label_noise import with_label_noise
from trainer.bench.training import OurTrainer
from trainer.config import TrainConfig
from trainer.run import training_data


@pytest.fixture(scope="module")
def data():
    return mnist.load("bundled")


def test_it_flips_that_fraction_of_training_labels_to_other_classes_only(data):
    noisy = with_label_noise(data, 0.2, seed=0)
    changed = noisy.train.labels != data.train.labels
    assert changed.sum() == round(0.2 * len(data.train))
    # Every class is reached from every other, about uniformly (1/9 of the flips each).
    pairs = np.zeros((10, 10), int)
    np.add.at(pairs, (data.train.labels[changed], noisy.train.labels[changed]), 1)
    assert np.all(np.diag(pairs) == 0) and pairs.sum(axis=1).min() > 0
    shares = pairs[~np.eye(10, dtype=bool)] / changed.sum()
    assert shares.min() > 0.5 / 90 and shares.max() < 2 / 90
    np.testing.assert_array_equal(noisy.train.images, data.train.images)
    for split in ("validation", "test"):
        np.testing.assert_array_equal(
            getattr(noisy, split).labels, getattr(data, split).labels, err_msg=split
        )
    assert noisy.fingerprint != data.fingerprint


def test_the_seed_picks_the_labels_and_the_same_seed_picks_the_same(data):
    first, again = with_label_noise(data, 0.2, seed=1), with_label_noise(data, 0.2, seed=1)
    np.testing.assert_array_equal(first.train.labels, again.train.labels)
    assert first.fingerprint == again.fingerprint
    other = with_label_noise(data, 0.2, seed=2)
    assert not np.array_equal(first.train.labels, other.train.labels)
    assert with_label_noise(data, 0.0, seed=1) is data


def test_the_trainer_and_the_bench_train_on_the_noisy_labels(data, tmp_path):
    config = TrainConfig(label_noise=0.2, data_source="bundled", hidden_sizes=(8,))
    strategy = tf.distribute.get_strategy()
    loaded = training_data.load(config, strategy, str(tmp_path))
    want = with_label_noise(data, 0.2, config.seed)
    np.testing.assert_array_equal(loaded.train.labels, want.train.labels)
    assert training_data.record(loaded)["fingerprint"] == want.fingerprint != data.fingerprint
    bench = OurTrainer(strategy, config)
    np.testing.assert_array_equal(bench.inputs.data.train.labels, want.train.labels)
