"""Killed, preempted, diverging and corrupted runs lose nothing that was completed."""

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from tests.toolkit import (
    WEIGHTS_AND_OPTIMIZER,
    Pause,
    assert_same_tensors,
    checkpoint_path,
    checkpoint_tensors,
    command_line,
    environment,
    finish,
    start_module,
)
from trainer.common.exit_codes import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.recipe import CHECKPOINT_DIR, train_and_evaluate
from trainer.run.checkpoints import CheckpointError, RunCheckpoints
from trainer.run.files import RESULT_FILE
from trainer.step.state import DivergenceError, build_train_state

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# Deterministic, on 2 logical CPU replicas, checkpointing often: 200 steps of a small model.
CONFIG = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(64,),
    batch_size=500,
    epochs=2,
    learning_rate=3e-3,
    warmup_epochs=0.0,
    steps_per_loop=5,
    checkpoint_every_steps=25,
    data_source="bundled",
    deterministic=True,
)
FINAL_STEP = 200


def start(logdir, run_name, env=None, config=CONFIG) -> subprocess.Popen:
    """The trainer on `config`, its stderr merged into stdout to be read line by line."""
    config = dataclasses.replace(config, logdir=str(logdir), run_name=run_name)
    return start_module(
        "trainer.train",
        *command_line(config),
        stderr=subprocess.STDOUT,
        **({"env": env} if env else {}),
    )


def run_to_end(logdir, run_name, config=CONFIG) -> str:
    done = finish(start(logdir, run_name, config=config))
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


def interrupt_after(
    logdir, run_name, checkpoint_step: int, signum, config=CONFIG
) -> tuple[int, str]:
    """Starts a run, and sends `signum` while it is held right after saving
    ckpt-<checkpoint_step>: the signal arrives at that step on any machine."""
    pause = Pause(pathlib.Path(logdir, f"{run_name}.pause"), checkpoint_step)
    process = start(logdir, run_name, env={**environment(), **pause.env()}, config=config)
    pause.wait(process)
    process.send_signal(signum)
    pause.release()
    done = finish(process)
    return done.returncode, done.stdout


def final_state(logdir, run_name) -> dict[str, np.ndarray]:
    """Every variable of the final checkpoint: weights, optimizer slots and step counter."""
    return checkpoint_tensors(
        checkpoint_path(os.path.join(logdir, run_name), FINAL_STEP), WEIGHTS_AND_OPTIMIZER
    )


def resumed_step(output: str) -> int:
    return int(re.search(r"resumed from \S+ at step (\d+)", output).group(1))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("fault")
    run_to_end(logdir, "uninterrupted")
    return logdir, final_state(logdir, "uninterrupted")


def assert_bitwise_equal(got, want):
    assert len(want) >= 4 + 8 + 1  # Weights, Adam's slots, its step counter.
    assert_same_tensors(got, want)


def test_a_run_killed_mid_run_and_restarted_ends_bit_for_bit_as_if_never_killed(uninterrupted):
    logdir, want = uninterrupted
    kill_and_resume(logdir, "killed")
    assert_bitwise_equal(final_state(logdir, "killed"), want)


def kill_and_resume(logdir, run_name, config=CONFIG) -> None:
    """Kills a run with SIGKILL right after its checkpoint at step 50, and reruns it."""
    returncode, output = interrupt_after(logdir, run_name, 50, signal.SIGKILL, config)
    assert returncode == -signal.SIGKILL, output[-3000:]
    assert f"ckpt-{FINAL_STEP}" not in output  # It really died mid-run.
    output = run_to_end(logdir, run_name, config)
    assert resumed_step(output) == 50


# Each new optimizer, and accumulation with SAM, with every transform that keeps state: clipping's
# count, the EMA.
RECIPES = {
    "adamw": dict(optimizer="adamw", weight_decay=0.05),
    "lion": dict(optimizer="lion", learning_rate=3e-4, weight_decay=0.3),
    "muon": dict(optimizer="muon"),
    # Accumulation's 5 micro-batches of 50, and SAM's two passes over them.
    "adam-accumulated-sam": dict(optimizer="adam", grad_accum_steps=5, sam_rho=0.05),
}
# The recipe that goes through the real command line, killed with SIGKILL; the others are killed
# in this process, right after the same save (the checkpoint is all a resumption reads either way).
KILLED_FOR_REAL = "adam-accumulated-sam"


def recipe_config(name: str) -> TrainConfig:
    return dataclasses.replace(CONFIG, clip_global_norm=0.5, ema_decay=0.9, **RECIPES[name])


def test_a_recipe_with_clipping_and_ema_resumes_bit_for_bit_after_kill_9(tmp_path):
    config = recipe_config(KILLED_FOR_REAL)
    run_to_end(tmp_path, "uninterrupted", config)
    want = final_state(tmp_path, "uninterrupted")
    assert any("averages" in key for key in want) and any("clipped_steps" in key for key in want)
    kill_and_resume(tmp_path, "killed", config)
    assert_bitwise_equal(final_state(tmp_path, "killed"), want)


class _Killed(BaseException):
    """Ends a run in this process as SIGKILL would: nothing after the save runs."""


@pytest.mark.parametrize("name", sorted(set(RECIPES) - {KILLED_FOR_REAL}))
def test_each_other_recipe_resumes_bit_for_bit_from_a_checkpoint_mid_run(
    name, tmp_path, monkeypatch
):
    config = dataclasses.replace(recipe_config(name), logdir=str(tmp_path))
    train_and_evaluate(dataclasses.replace(config, run_name="uninterrupted"))
    want = final_state(tmp_path, "uninterrupted")
    assert any("averages" in key for key in want) and any("clipped_steps" in key for key in want)

    save = RunCheckpoints.save

    def save_then_die(self, step):
        path = save(self, step)
        if step == 50:
            raise _Killed(path)
        return path

    killed = dataclasses.replace(config, run_name="killed")
    with monkeypatch.context() as patched:
        patched.setattr(RunCheckpoints, "save", save_then_die)
        with pytest.raises(_Killed):
            train_and_evaluate(killed)
    assert tf.train.latest_checkpoint(tmp_path / "killed" / CHECKPOINT_DIR).endswith("ckpt-50")
    assert train_and_evaluate(killed).steps == FINAL_STEP
    assert_bitwise_equal(final_state(tmp_path, "killed"), want)


@pytest.mark.parametrize(
    "signum, exit_code, name",
    [
        (signal.SIGTERM, PREEMPTED_EXIT_CODE, "SIGTERM"),  # A scheduler's: it restarts the job.
        (signal.SIGINT, INTERRUPTED_EXIT_CODE, "Ctrl-C"),  # A person's: nothing restarts it.
    ],
)
def test_a_stop_signal_saves_the_steps_completed_and_the_rerun_resumes_them(
    uninterrupted, signum, exit_code, name
):
    logdir, want = uninterrupted
    returncode, output = interrupt_after(logdir, name, 50, signum)
    assert returncode == exit_code, output[-3000:]
    # Signalled at the step boundary of step 50: it stops there, losing no completed step.
    assert f"{name}: stopped at step 50 of {FINAL_STEP} with a checkpoint saved" in output, output
    assert "Traceback" not in output
    latest = tf.train.latest_checkpoint(os.path.join(logdir, name, CHECKPOINT_DIR))
    assert latest.endswith("ckpt-50")
    output = run_to_end(logdir, name)
    assert resumed_step(output) == 50
    assert_bitwise_equal(final_state(logdir, name), want)


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    # Held after saving ckpt-50, it is sent Ctrl-C, says it will stop at the next step boundary,
    # and is sent another before it is let go: it ends there, with the checkpoint it had.
    pause = Pause(tmp_path / "pause", 50)
    process = start(tmp_path, "run", env={**environment(), **pause.env()})
    lines, first_answered = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C: stopping at the next step boundary"):
                first_answered.set()

    reader = threading.Thread(target=read)
    reader.start()
    pause.wait(process)
    process.send_signal(signal.SIGINT)
    assert first_answered.wait(timeout=60), "".join(lines)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == INTERRUPTED_EXIT_CODE, "".join(lines)
    reader.join()
    output = "".join(lines)
    assert "Ctrl-C again: stopping at once" in output and "Traceback" not in output, output
    assert "stopped at step" not in output  # Not let go: it never reached a step boundary.
    latest = tf.train.latest_checkpoint(os.path.join(tmp_path, "run", CHECKPOINT_DIR))
    assert latest.endswith("ckpt-50")


def test_a_ctrl_c_as_the_run_starts_stops_it_before_its_first_step(tmp_path):
    pause = Pause(tmp_path / "pause", None)  # Held before it restores and trains.
    process = start(tmp_path, "run", env={**environment(), **pause.env()})
    pause.wait(process)
    process.send_signal(signal.SIGINT)
    pause.release()
    done = finish(process)
    assert done.returncode == INTERRUPTED_EXIT_CODE, done.stdout[-3000:]
    assert f"Ctrl-C: stopped at step 0 of {FINAL_STEP} before training a step" in done.stdout, (
        done.stdout
    )
    assert tf.train.latest_checkpoint(os.path.join(tmp_path, "run", CHECKPOINT_DIR)) is None


# Plain gradient descent at 1e30: step 1 is finite, step 2 overflows to NaN.
DIVERGING = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(64,),
    batch_size=500,
    epochs=1,
    optimizer="gd",
    learning_rate=1e30,
    lr_schedule="constant",
    warmup_epochs=0,
    steps_per_loop=1,
    checkpoint_every_steps=1,
    data_source="bundled",
)


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = dataclasses.replace(DIVERGING, logdir=str(tmp_path))
    with pytest.raises(DivergenceError, match=r"step 2: the loss or a gradient is not finite"):
        train_and_evaluate(config)
    checkpoints = os.path.join(tmp_path, config.run_dir_name(), CHECKPOINT_DIR)
    latest = tf.train.latest_checkpoint(checkpoints)
    assert latest.endswith("ckpt-1")
    kept = checkpoint_tensors(latest, WEIGHTS_AND_OPTIMIZER)
    assert len(kept) >= 4 + 1
    for key, value in kept.items():
        if np.issubdtype(value.dtype, np.floating):
            assert np.isfinite(value).all(), key


def test_a_run_that_diverges_on_every_retry_stops_cleanly_after_its_tries(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    config = dataclasses.replace(DIVERGING, logdir=str(tmp_path), nonfinite_retries=2)
    with pytest.raises(DivergenceError, match="step 2"):
        train_and_evaluate(config)
    messages = [r.message for r in caplog.records]
    restores = [m for m in messages if "restoring the last good checkpoint" in m]
    assert [m.split("(")[-1] for m in restores] == ["1 retries left)", "0 retries left)"]
    assert sum("resumed from" in m and "ckpt-1 at step 1" in m for m in messages) == 2
    # Each retry went on past the batch it diverged on; at 1e30 the next diverged as well.
    assert messages.count("skipping the batches of steps 2-2, on which training diverged") == 2


def test_a_spike_in_one_window_is_skipped_and_the_run_finishes(tmp_path, monkeypatch):
    # Batch 37 of the data (the one step 38 takes) holds NaN images, once: the step diverges.
    poisoned_batch = 37
    real_train_dataset = mnist.train_dataset

    def with_a_spike(split, global_batch_size, seed, first_epoch=0, skip_batches=0):
        first = first_epoch * (len(split) // global_batch_size) + skip_batches
        return (
            real_train_dataset(split, global_batch_size, seed, first_epoch, skip_batches)
            .enumerate(first)
            .map(
                lambda position, batch: (
                    tf.where(position == poisoned_batch, np.nan, batch[0]),
                    batch[1],
                )
            )
        )

    monkeypatch.setattr(mnist, "train_dataset", with_a_spike)
    config = dataclasses.replace(
        CONFIG, logdir=str(tmp_path), epochs=1, nonfinite_retries=1, deterministic=False
    )
    result = train_and_evaluate(config)
    # Back to ckpt-25, past the batches of steps 26-38; then 100 steps all told.
    assert result.steps == 100 and result.skipped_windows == [[26, 38]]
    assert result.test_accuracy > 0.9
    run_dir = pathlib.Path(result.run_dir)
    assert json.loads((run_dir / RESULT_FILE).read_text())["skipped_windows"] == [[26, 38]]
    # Checkpointed, so a run resumed after the skip skips the same batches.
    saved = tf.train.load_checkpoint(checkpoint_path(run_dir, 100))
    assert saved.get_tensor("skipped_windows/.ATTRIBUTES/VARIABLE_VALUE").tolist() == [[26, 38]]


SMALL = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(32,),
    batch_size=1000,
    epochs=2,
    warmup_epochs=0,
    data_source="bundled",
)


def test_a_corrupted_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    config = dataclasses.replace(SMALL, logdir=str(tmp_path))
    train_and_evaluate(config)
    checkpoints = pathlib.Path(tmp_path, config.run_dir_name(), CHECKPOINT_DIR)
    # As if killed before its end: neither exported nor finished.
    shutil.rmtree(checkpoints.parent / "export")
    (checkpoints.parent / RESULT_FILE).unlink()
    for data_file in checkpoints.glob("ckpt-100.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:100])  # Truncated, as by a full disk.
    caplog.set_level(logging.INFO, logger="absl")  # The SavedModel export turned it down.
    result = train_and_evaluate(config)
    assert any("ckpt-100 is unreadable" in r.message for r in caplog.records)
    assert any(
        "resumed from" in r.message and "ckpt-50 at step 50" in r.message for r in caplog.records
    )
    assert result.steps == 100 and result.test_accuracy > 0.8
    # Epoch 2 was trained again and saved anew, readable this time: every tensor reads back.
    assert len(checkpoint_tensors(str(checkpoints / "ckpt-100"), WEIGHTS_AND_OPTIMIZER)) >= 4


def test_a_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    config = dataclasses.replace(SMALL, logdir=str(tmp_path), run_name="run")
    train_and_evaluate(config)
    for name in ("flags.txt", RESULT_FILE):  # Only the checkpoint can tell.
        os.remove(os.path.join(tmp_path, "run", name))
    wider = dataclasses.replace(config, hidden_sizes=(48,))
    with pytest.raises(CheckpointError, match=r"ckpt-100: written by a model of another shape"):
        train_and_evaluate(wider)


def test_a_checkpoint_lacking_part_of_the_state_is_a_clear_error(tmp_path):
    # As one written before the trainer checkpointed its skipped windows: weights and optimizer.
    config = dataclasses.replace(SMALL, strategy="one_device", cpu_replicas=1)
    state = build_train_state(strategies.create_strategy("one_device"), config, 1)
    older = tf.train.Checkpoint(model=state.model, optimizer=state.optimizer)
    tf.train.CheckpointManager(older, str(tmp_path), 1).save(checkpoint_number=7)
    with pytest.raises(
        CheckpointError,
        match=r"ckpt-7: lacks some of what this trainer "
        r"checkpoints .*; written by an older version",
    ):
        RunCheckpoints(state.checkpoint(), str(tmp_path), 1).restore()


def test_sigterm_means_what_it_meant_before_once_the_run_is_over(tmp_path):
    # In-process runs (tests, notebooks) get SIGTERM back, after a run that ends as after one
    # that stops on an error: it is held only while a run lasts.
    before = signal.getsignal(signal.SIGTERM)
    train_and_evaluate(dataclasses.replace(SMALL, logdir=str(tmp_path), epochs=1))
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(DivergenceError):
        train_and_evaluate(dataclasses.replace(DIVERGING, logdir=str(tmp_path)))
    assert signal.getsignal(signal.SIGTERM) is before
