"""The trainer with the new optimizers and transforms: what TensorBoard shows, what is exported."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from models.mlp import MLP
from tests.toolkit import scalars
from trainer.config import TrainConfig
from trainer.recipe import CHECKPOINT_DIR, train_and_evaluate

pytestmark = pytest.mark.slow  # Trains for a while.

# 100 steps an epoch on two logical CPU replicas.
CONFIG = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(64,),
    batch_size=500,
    epochs=2,
    steps_per_loop=25,
    learning_rate=3e-3,
    warmup_epochs=0.0,
    data_source="bundled",
    optimizer="adamw",
    clip_global_norm=0.3,
    ema_decay=0.95,
)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    config = dataclasses.replace(CONFIG, logdir=str(tmp_path_factory.mktemp("ema")))
    return config, train_and_evaluate(config)


def models_from_the_last_checkpoint(config, run_dir, averages=True) -> tuple[MLP, MLP | None]:
    """(the weights, their averages or None), each as a model, from the last checkpoint."""
    path = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINT_DIR))
    reader = tf.train.load_checkpoint(path)
    raw, averaged = (MLP(mnist.NUM_PIXELS, config.hidden_sizes, mnist.NUM_CLASSES) for _ in "ab")
    tf.train.Checkpoint(model=raw).restore(path).expect_partial()
    if not averages:
        return raw, None
    # The EMA's averages, in the weights' order: optimizer/transforms/<its index>/averages/i.
    keys = sorted(
        (key for key in reader.get_variable_to_shape_map() if "/averages/" in key),
        key=lambda key: int(key.split("/averages/")[1].split("/")[0]),
    )
    assert len(keys) == len(averaged.trainable_variables)
    for variable, key in zip(averaged.trainable_variables, keys):
        variable.assign(reader.get_tensor(key))
    return raw, averaged


def test_tensorboard_shows_raw_and_averaged_validation_and_the_clip_rate(ema_run):
    _, result = ema_run
    logged = scalars(result.run_dir)
    assert len(logged["eval/accuracy"]) == len(logged["eval_ema/accuracy"]) == 2
    assert logged["eval/accuracy"] != logged["eval_ema/accuracy"]
    assert all(accuracy > 0.85 for accuracy in logged["eval_ema/accuracy"])
    rates = logged["optim/clip_rate"]
    assert len(rates) == 200 // 25 and all(0.0 <= rate <= 1.0 for rate in rates)
    assert 0 < max(rates)  # Gradient norms here are 0.3-0.5 (batch 500).
    # The logged norm is the norm before clipping: above the limit while it clips.
    assert max(logged["optim/grad_norm"]) > 0.3


def test_the_export_and_the_test_score_are_the_averages(ema_run):
    config, result = ema_run
    raw, averaged = models_from_the_last_checkpoint(config, result.run_dir)
    test = mnist.load("bundled").test
    pixels = mnist.to_features(tf.constant(test.images))
    served = tf.saved_model.load(result.export_dir).signatures["classify_pixels"]
    probabilities = served(pixels=pixels)["probabilities"].numpy()
    np.testing.assert_allclose(
        probabilities, tf.nn.softmax(averaged(pixels)).numpy(), rtol=1e-5, atol=1e-7
    )
    assert not np.allclose(probabilities, tf.nn.softmax(raw(pixels)).numpy(), atol=1e-3)
    accuracy = float((probabilities.argmax(axis=1) == test.labels).mean())
    assert result.test_accuracy == pytest.approx(accuracy, abs=1e-6)


@pytest.mark.parametrize("optimizer", ["lion", "muon"])
def test_each_new_optimizer_trains_the_mlp(optimizer, tmp_path):
    settings = {"lion": dict(learning_rate=1e-3), "muon": dict(learning_rate=3e-3)}[optimizer]
    config = dataclasses.replace(
        CONFIG, logdir=str(tmp_path), optimizer=optimizer, ema_decay=0.0, **settings
    )
    assert train_and_evaluate(config).test_accuracy > 0.9


def test_a_sam_run_exports_and_checkpoints_w_never_w_plus_e(tmp_path):
    config = dataclasses.replace(
        CONFIG, logdir=str(tmp_path), optimizer="adam", ema_decay=0.0, sam_rho=0.05, epochs=1
    )
    result = train_and_evaluate(config)
    raw, _ = models_from_the_last_checkpoint(config, result.run_dir, averages=False)
    pixels = mnist.to_features(tf.constant(mnist.load("bundled").test.images[:512]))
    served = tf.saved_model.load(result.export_dir).signatures["classify_pixels"]
    np.testing.assert_allclose(
        served(pixels=pixels)["probabilities"].numpy(),
        tf.nn.softmax(raw(pixels)).numpy(),
        rtol=1e-5,
        atol=1e-7,
    )
    assert result.test_accuracy > 0.85


def test_a_schedule_free_run_learns_and_validates_tests_and_exports_x(tmp_path):
    config = dataclasses.replace(
        CONFIG,
        logdir=str(tmp_path),
        optimizer="schedule_free_adamw",
        lr_schedule="constant",
        warmup_epochs=0.2,
        learning_rate=5e-3,
        clip_global_norm=0.0,
        ema_decay=0.0,
        epochs=1,
    )
    result = train_and_evaluate(config)
    logged = scalars(result.run_dir)
    assert len(logged["eval/accuracy"]) == len(logged["eval_ema/accuracy"]) == 1  # y and x.
    assert logged["eval/accuracy"] != logged["eval_ema/accuracy"]
    y, x = models_from_the_last_checkpoint(config, result.run_dir)  # x: optimizer/averages/.
    pixels = mnist.to_features(tf.constant(mnist.load("bundled").test.images[:512]))
    served = tf.saved_model.load(result.export_dir).signatures["classify_pixels"]
    probabilities = served(pixels=pixels)["probabilities"].numpy()
    np.testing.assert_allclose(
        probabilities, tf.nn.softmax(x(pixels)).numpy(), rtol=1e-5, atol=1e-7
    )
    assert not np.allclose(probabilities, tf.nn.softmax(y(pixels)).numpy(), atol=1e-3)
    assert result.test_accuracy > 0.9
