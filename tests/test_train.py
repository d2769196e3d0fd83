"""The real entry function and the real command line, for a few steps on real MNIST."""

import dataclasses
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from models.mlp import MLP
from tests.toolkit import (
    assert_same_tensors,
    checkpoint_path,
    checkpoint_tensors,
    command_line,
    run_module,
    scalars,
    summaries,
)
from trainer.config import ConfigError, TrainConfig
from trainer.recipe import CHECKPOINT_DIR, train_and_evaluate
from trainer.run.files import FLAGS_FILE, RESULT_FILE

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 100 steps an epoch on two logical CPU replicas: seconds, yet real training.
TINY = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(64,),
    batch_size=500,
    epochs=2,
    steps_per_loop=40,
    learning_rate=3e-3,
    warmup_epochs=0.0,
    data_source="bundled",
)


def tiny(tmp_path, **overrides) -> TrainConfig:
    return dataclasses.replace(TINY, logdir=str(tmp_path / "runs"), **overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    config = tiny(tmp_path_factory.mktemp("finished"))
    return config, train_and_evaluate(config)


def test_a_run_learns_and_logs_to_tensorboard(finished_run):
    config, result = finished_run
    assert result.steps == 200 and result.test_accuracy > 0.9
    logged = scalars(result.run_dir)
    for tag in (
        "train/loss",
        "train/accuracy",
        "eval/loss",
        "eval/accuracy",
        "test/accuracy",
        "optim/learning_rate",
        "perf/examples_per_sec",
    ):
        assert tag in logged, tag
    assert len(logged["train/loss"]) == 2 * 3  # ceil(100 / 40) points an epoch.
    assert logged["train/loss"][-1] < logged["train/loss"][0] / 2
    assert len(logged["eval/accuracy"]) == 2 and logged["eval/accuracy"][-1] > 0.9
    assert logged["test/accuracy"] == [pytest.approx(result.test_accuracy)]
    # The cosine schedule falls from its peak.
    assert logged["optim/learning_rate"][0] == pytest.approx(3e-3)
    assert logged["optim/learning_rate"][-1] < 1e-3


def test_a_run_shows_histograms_images_text_and_its_graph(finished_run):
    config, result = finished_run
    found = summaries(result.run_dir)
    # The Graphs tab reads the traced train loop from this plugin's data.
    assert found["train_loop"].plugin == "graph_run_metadata_graph"
    for layer in ("dense_0", "dense_1"):
        weights = found[f"weights/mlp/{layer}/w"]
        assert weights.plugin == "histograms" and weights.steps == [100, 200]  # Epoch ends.
        assert found[f"optimizer/adam/mlp_{layer}_w_m"].plugin == "histograms"
        assert found[f"optimizer/adam/mlp_{layer}_w_v"].plugin == "histograms"
    grids = found["eval/misclassified"]
    assert grids.plugin == "images" and len(grids.values) == 2
    width, height = (int(x) for x in grids.values[0][:2])  # Encoded images: width, height, PNG.
    assert width > 100 and height > 100
    flags_text = found["config/flags"]
    assert flags_text.plugin == "text"
    assert "--hidden_sizes=64" in flags_text.values[0].item().decode()
    grad_norms = scalars(result.run_dir)["optim/grad_norm"]
    assert all(np.isfinite(grad_norms)) and grad_norms[0] > 0


def test_a_run_keeps_a_checkpoint_per_epoch_and_its_flags(finished_run):
    config, result = finished_run
    checkpoints = tf.train.get_checkpoint_state(os.path.join(result.run_dir, CHECKPOINT_DIR))
    assert [os.path.basename(p) for p in checkpoints.all_model_checkpoint_paths] == [
        "ckpt-100",
        "ckpt-200",
    ]
    flags_text = pathlib.Path(result.run_dir, FLAGS_FILE).read_text()
    assert "--hidden_sizes=64\n" in flags_text and "--batch_size=500\n" in flags_text
    assert flags_text.startswith("# git commit ")
    recorded = json.loads(pathlib.Path(result.run_dir, RESULT_FILE).read_text())
    assert recorded["steps"] == 200
    assert recorded["test_accuracy"] == pytest.approx(result.test_accuracy)


def test_the_export_serves_the_trained_model(finished_run):
    config, result = finished_run
    test = mnist.load("bundled").test
    served = tf.saved_model.load(result.export_dir)
    images = tf.constant(test.images[:256])
    from_images = served.signatures["serving_default"](images=images)["probabilities"].numpy()
    from_pixels = served.signatures["classify_pixels"](pixels=mnist.to_features(images))[
        "probabilities"
    ].numpy()
    np.testing.assert_allclose(from_images.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(from_images, from_pixels, rtol=1e-5, atol=1e-6)
    # Same predictions as the model rebuilt from the last checkpoint.
    model = MLP(mnist.NUM_PIXELS, config.hidden_sizes, mnist.NUM_CLASSES)
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(os.path.join(result.run_dir, CHECKPOINT_DIR))
    ).expect_partial()
    expected = tf.nn.softmax(model(mnist.to_features(images))).numpy()
    np.testing.assert_allclose(from_images, expected, rtol=1e-5, atol=1e-7)
    accuracy = (from_images.argmax(axis=1) == test.labels[:256]).mean()
    assert accuracy > 0.9


def test_a_rerun_resumes_and_ends_where_an_uninterrupted_run_ends(finished_run, tmp_path):
    config, result = finished_run
    # A copy of the finished run, cut back to its first epoch as if it died after it.
    resumed = tiny(tmp_path)
    run_dir = pathlib.Path(resumed.logdir, resumed.run_dir_name())
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    checkpoint_dir.mkdir(parents=True)
    for part in pathlib.Path(result.run_dir, CHECKPOINT_DIR).glob("ckpt-100.*"):
        (checkpoint_dir / part.name).write_bytes(part.read_bytes())
    # The state file CheckpointManager keeps, as it stood after the first epoch's save.
    (checkpoint_dir / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-100"\nall_model_checkpoint_paths: "ckpt-100"\n'
    )

    again = train_and_evaluate(resumed)
    assert again.steps == 200
    assert sorted(p.name for p in checkpoint_dir.glob("ckpt-*.index")) == [
        "ckpt-100.index",
        "ckpt-200.index",
    ]
    # Same data order, same ops: the resumed run ends with the same weights.
    want = checkpoint_tensors(checkpoint_path(result.run_dir, 200))
    assert len(want) == 4
    assert_same_tensors(
        checkpoint_tensors(checkpoint_path(run_dir, 200)), want, rtol=1e-6, atol=1e-7
    )


def test_noxla_update_takes_the_same_steps_op_by_op(finished_run, tmp_path):
    config, result = finished_run
    op_by_op = train_and_evaluate(tiny(tmp_path, xla_update=False))
    # Only float32 rounding tells XLA's fused loop from the op-by-op kernels.
    assert_same_tensors(
        checkpoint_tensors(checkpoint_path(op_by_op.run_dir, 200)),
        checkpoint_tensors(checkpoint_path(result.run_dir, 200)),
        rtol=1e-3,
        atol=1e-4,
    )


def test_resuming_with_other_settings_is_refused(finished_run):
    config, result = finished_run
    other = dataclasses.replace(config, run_name=os.path.basename(result.run_dir), seed=7)
    with pytest.raises(ConfigError, match=r"--seed=7: the run in .* was started with --seed=0"):
        train_and_evaluate(other)


def test_rerunning_a_finished_run_from_its_flagfile_reports_it_and_trains_nothing(finished_run):
    config, result = finished_run
    before = {p: p.stat().st_mtime_ns for p in pathlib.Path(result.run_dir).rglob("*")}
    done = run_module(
        "trainer.train",
        f"--flagfile={os.path.join(result.run_dir, FLAGS_FILE)}",
        "--cpu_replicas=2",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == (
        f"trainer.train: {result.run_dir} finished before: test accuracy "
        f"{result.test_accuracy:.4f} after {result.steps} steps; nothing was "
        "trained. To train anew, change a setting that names the run, or "
        "pass another --run_name or --logdir\n"
    )
    assert {p: p.stat().st_mtime_ns for p in pathlib.Path(result.run_dir).rglob("*")} == before


def test_the_run_records_the_data_it_trains_on(finished_run):
    config, result = finished_run
    recorded = json.loads(pathlib.Path(result.run_dir, "data.json").read_text())
    assert recorded == {"source": "bundled", "fingerprint": mnist.load("bundled").fingerprint}


def test_helpfull_documents_every_setting():
    shown = run_module("trainer.train", "--helpfull").stdout
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name}:" in shown or f"--[no]{field.name}:" in shown, field.name


def test_periodic_work_lands_on_exactly_the_steps_asked_for(tmp_path):
    # With the default 100 steps per compiled run, histograms every 30 steps and a profile of
    # steps 10-20 still land on their own steps: runs are cut wherever anything is due.
    result = train_and_evaluate(
        tiny(
            tmp_path, epochs=1, steps_per_loop=100, histogram_every_steps=30, profile_steps=(10, 20)
        )
    )
    found = summaries(result.run_dir)
    assert found["weights/mlp/dense_0/w"].steps == [30, 60, 90]
    assert found["train/loss"].steps == [10, 20, 30, 60, 90, 100]
    assert found["eval/accuracy"].steps == [100]
    traces = list(pathlib.Path(result.run_dir, "plugins", "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1


def test_an_export_cut_short_leaves_nothing_under_its_name_and_the_next_one_completes(
    tmp_path, monkeypatch
):
    from trainer.run import export as export_module

    model = MLP(mnist.NUM_PIXELS, [8], mnist.NUM_CLASSES)
    final = tmp_path / "export" / "100"
    real_save = tf.saved_model.save

    def killed_midway(obj, directory, signatures=None):
        pathlib.Path(directory).mkdir(parents=True)
        (pathlib.Path(directory) / "saved_model.pb").write_bytes(b"half")
        raise KeyboardInterrupt("killed mid-export")

    monkeypatch.setattr(tf.saved_model, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        export_module.export(model, str(final))
    assert not final.exists()  # A rerun must not take the half export for a whole one.
    assert sorted(p.name for p in final.parent.iterdir()) == [".100.partial"]

    monkeypatch.setattr(tf.saved_model, "save", real_save)
    export_module.export(model, str(final))
    assert sorted(p.name for p in final.parent.iterdir()) == ["100"]
    served = tf.saved_model.load(str(final))
    probabilities = served.signatures["serving_default"](images=tf.zeros([2, 28, 28], tf.uint8))[
        "probabilities"
    ]
    np.testing.assert_allclose(probabilities.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_a_one_epoch_run_works_with_the_default_warm_up(tmp_path):
    # The default warm-up (1 epoch) is not shorter than the run: it shrinks to a tenth of it,
    # and says so. One the user sets is honoured or refused (tests/test_command_lines.py).
    done = run_module(
        "trainer.train",
        "--epochs=1",
        "--hidden_sizes=16",
        "--batch_size=1000",
        "--data_source=bundled",
        f"--logdir={tmp_path}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warming up for 0.1 instead" in done.stderr
    [run_dir] = tmp_path.iterdir()
    assert run_dir.name == "mlp16_adam_lr0.002_cosine_w0.1_b1000_e1_s0"
    assert "--warmup_epochs=0.1\n" in (run_dir / FLAGS_FILE).read_text()


def test_scores_are_over_all_10000_examples_at_a_batch_that_does_not_divide_them(tmp_path):
    # 2 replicas x 192: 26 whole batches and 16 examples over, which evaluation pads with
    # weight-0 examples; through the command line, as a user runs it.
    config = tiny(tmp_path, batch_size=384, epochs=1, run_name="odd_batch")
    done = run_module("trainer.train", *command_line(config))
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = pathlib.Path(config.logdir, "odd_batch")
    result = json.loads((run_dir / RESULT_FILE).read_text())
    served = tf.saved_model.load(result["export_dir"])  # The weights both scores were taken on.
    data = mnist.load("bundled")

    def correct(split: mnist.Split) -> int:
        probabilities = served.signatures["serving_default"](images=tf.constant(split.images))
        return int((probabilities["probabilities"].numpy().argmax(axis=1) == split.labels).sum())

    # A score is correct answers over examples counted: over 10,000 it is the export's count of
    # correct answers on the 10,000 images over 10,000, to float precision (float32 in events).
    assert len(data.test) == len(data.validation) == 10_000
    assert result["test_accuracy"] == pytest.approx(correct(data.test) / 10_000, abs=1e-9)
    validation = scalars(run_dir)["eval/accuracy"]
    assert len(validation) == 1  # One epoch: scored on the final weights.
    assert validation[0] == pytest.approx(correct(data.validation) / 10_000, abs=1e-6)
