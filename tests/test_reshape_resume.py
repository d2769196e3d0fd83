"""A job rescheduled on another shape resumes where it stopped, at the same global batch: 2
workers, then one process on 2 replicas, then one on 1 device, each change mid-epoch, end where
an uninterrupted run ends; across each change every training example is seen once an epoch."""

import collections
import dataclasses
import hashlib
import io
import os
import re
import signal
import threading

import pytest
import tensorflow as tf

from data import mnist
from launch import local
from tests.toolkit import (
    Pause,
    assert_same_tensors,
    checkpoint_path,
    checkpoint_tensors,
    command_line,
    environment,
    finish,
    start_module,
)
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.recipe import train_and_evaluate
from trainer.step.inputs import Inputs

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 100 steps an epoch, 3 epochs; checkpoints every 50 steps, where the shape changes.
CONFIG = TrainConfig(
    hidden_sizes=(64,),
    batch_size=500,
    epochs=3,
    warmup_epochs=0.0,
    steps_per_loop=10,
    checkpoint_every_steps=50,
    data_source="bundled",
    run_name="job",
)
STEPS_PER_EPOCH, TOTAL_STEPS = 100, 300


def resumed_at(output: str) -> set[int]:
    return {
        int(step)
        for path_step, step in re.findall(r"resumed from \S+ckpt-(\d+) at step (\d+)", output)
        if path_step == step
    }


def stopped_at(output: str) -> set[int]:
    return {int(step) for step in re.findall(r"SIGTERM: stopped at step (\d+)", output)}


def two_workers_preempted(config: TrainConfig, pause: Pause) -> int:
    """The 2-worker job, SIGTERMed while `pause` holds worker 1; the step both stopped at."""
    output, codes = io.StringIO(), []
    job = threading.Thread(
        target=lambda: codes.append(
            local.run_job(
                2, command_line(config), sink=output, env={**environment(), **pause.env()}
            )
        )
    )
    job.start()
    os.kill(pause.wait(job.is_alive), signal.SIGTERM)
    pause.release()
    job.join(timeout=300)
    assert codes == [128 + signal.SIGTERM], output.getvalue()[-3000:]
    (step,) = stopped_at(output.getvalue())
    return step


def one_process(config: TrainConfig, pause: Pause | None = None) -> str:
    """The trainer in one process on `config`'s strategy; SIGTERMed while `pause` holds it."""
    process = start_module(
        "trainer.train",
        *command_line(config),
        env={**environment(), **(pause.env() if pause else {})},
    )
    if pause:
        pause.wait(process)
        process.send_signal(signal.SIGTERM)
        pause.release()
    done = finish(process)
    assert done.returncode == (128 + signal.SIGTERM if pause else 0), done.stderr[-3000:]
    return done.stderr + done.stdout


def test_a_job_resumed_on_other_shapes_ends_as_an_uninterrupted_run(tmp_path):
    job = dataclasses.replace(CONFIG, logdir=str(tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "job"

    first_stop = two_workers_preempted(job, Pause(tmp_path / "pause1", 150, task=1))
    assert 150 <= first_stop < 200  # Mid-epoch 2.

    output = one_process(
        dataclasses.replace(job, strategy="mirrored", cpu_replicas=2),
        Pause(tmp_path / "pause2", 250),
    )
    assert resumed_at(output) == {first_stop} and stopped_at(output) == {250}

    output = one_process(dataclasses.replace(job, strategy="one_device"))
    assert resumed_at(output) == {250} and f"after {TOTAL_STEPS} steps" in output

    reference = train_and_evaluate(
        dataclasses.replace(
            CONFIG, logdir=str(tmp_path / "reference"), strategy="mirrored", cpu_replicas=2
        )
    )
    want = checkpoint_tensors(checkpoint_path(reference.run_dir, TOTAL_STEPS))
    # Equal but for the order replicas sum in: the same batches, in the same order.
    assert_same_tensors(
        checkpoint_tensors(checkpoint_path(run_dir, TOTAL_STEPS)), want, rtol=1e-4, atol=1e-6
    )


def examples_seen(
    strategy: tf.distribute.Strategy, data: mnist.Mnist, first: int, end: int
) -> list[bytes]:
    """A digest of each training example steps [first, end) take on `strategy`'s replicas."""
    batches = Inputs(strategy, data, CONFIG.batch_size, CONFIG.seed).train_batches(first)
    seen = []
    for _ in range(first, end):
        images, _ = next(batches)
        for replica_images in strategy.experimental_local_results(images):
            seen += [hashlib.sha256(row.tobytes()).digest() for row in replica_images.numpy()]
    return seen


def test_every_example_is_seen_once_an_epoch_across_a_change_of_shape():
    data = mnist.load("bundled")
    everything = collections.Counter(
        hashlib.sha256(row.tobytes()).digest()
        for row in mnist.to_features(data.train.images).numpy()
    )
    assert len(data.train) == STEPS_PER_EPOCH * CONFIG.batch_size  # No ragged batch dropped.
    two_replicas = strategies.create_strategy("mirrored", 2)
    one_device = strategies.create_strategy("one_device")
    for before, after, change in [(two_replicas, one_device, 150), (one_device, two_replicas, 130)]:
        epoch = change // STEPS_PER_EPOCH * STEPS_PER_EPOCH
        seen = examples_seen(before, data, epoch, change) + examples_seen(
            after, data, change, epoch + STEPS_PER_EPOCH
        )
        assert collections.Counter(seen) == everything
