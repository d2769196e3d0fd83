"""launch.local --max_restarts heals its job, as torchrun does: a worker preempted or killed gets
the whole job started again, which resumes from its latest checkpoint and ends with the very
weights of a job never interrupted; a worker that fails otherwise is never restarted."""

import dataclasses
import os
import re
import subprocess

import pytest

from launch.local_job import restartable
from tests.job_processes import Output, kill_tree, workers_of
from tests.toolkit import (
    WEIGHTS_AND_OPTIMIZER,
    Pause,
    assert_same_tensors,
    checkpoint_path,
    checkpoint_tensors,
    command_line,
    environment,
    start_module,
)
from trainer.config import TrainConfig

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# Deterministic: 200 steps of a small model on 2 workers, a checkpoint every 50.
CONFIG = TrainConfig(
    hidden_sizes=(64,),
    batch_size=500,
    epochs=2,
    learning_rate=3e-3,
    warmup_epochs=0.0,
    steps_per_loop=25,
    checkpoint_every_steps=50,
    data_source="bundled",
    deterministic=True,
)
FINAL_STEP = 200


@pytest.mark.parametrize(
    "returncode, restarted",
    [
        (143, True),  # Preempted, or a peer was lost.
        (-9, True),
        (-15, True),  # Killed: SIGKILL (the OOM killer), SIGTERM before the run began.
        (1, False),  # Bad flags, divergence: it would fail again.
        (130, False),
        (-2, False),  # Ctrl-C, once or twice: someone asked it to stop.
    ],
)
def test_what_gets_a_job_restarted(returncode, restarted):
    assert restartable(returncode) == restarted


@pytest.fixture
def launch(tmp_path):
    """launch(config, *launcher_flags, env=...) starts `python -m launch.local --workers=2`
    on `config` in tmp_path, its output read by an Output; what is left of it when the test
    ends (failing) is killed."""
    launchers = []

    def start(config: TrainConfig, *launcher_flags, env=None):
        config = dataclasses.replace(config, logdir=str(tmp_path))
        launchers.append(
            start_module(
                "launch.local",
                "--workers=2",
                *launcher_flags,
                "--",
                *command_line(config),
                env=env or environment(),
                stderr=subprocess.STDOUT,
            )
        )
        return launchers[-1], Output(launchers[-1])

    yield start
    for launcher in launchers:
        kill_tree(launcher)


def final_state(logdir, run_name: str) -> dict:
    return checkpoint_tensors(
        checkpoint_path(os.path.join(logdir, run_name), FINAL_STEP), WEIGHTS_AND_OPTIMIZER
    )


def launcher_lines(output: Output) -> list[str]:
    return [line for line in output.lines if not line.startswith("[worker ")]


def test_a_killed_worker_gets_the_job_restarted_to_the_weights_of_one_never_killed(
    launch, tmp_path
):
    launcher, output = launch(dataclasses.replace(CONFIG, run_name="uninterrupted"))
    assert launcher.wait(timeout=300) == 0, output.tail()

    pause = Pause(tmp_path / "pause", step=50, task=0)
    launcher, output = launch(
        dataclasses.replace(CONFIG, run_name="healed"),
        "--max_restarts=2",
        env={**environment(), **pause.env()},
    )
    pause.wait(launcher)  # The chief has saved ckpt-50.
    workers_of(launcher)[1].kill()  # As the OOM killer would.
    assert output.wait_for(r"\[launcher\] worker 1 exited"), output.tail()
    pause.release()
    assert launcher.wait(timeout=300) == 0, output.tail()
    assert launcher_lines(output) == [
        "[launcher] worker 1 exited with code -9; restarting the job from its latest "
        "checkpoint (1 restart left)\n"
    ]
    text = output.text()
    assert sorted(re.findall(r"\[worker (\d)\] .*resumed from \S+ckpt-50 at step 50", text)) == [
        "0",
        "1",
    ], text[-3000:]
    want = final_state(tmp_path, "uninterrupted")
    assert len(want) >= 4 + 8 + 1  # Weights, Adam's slots, its step counter.
    assert_same_tensors(final_state(tmp_path, "healed"), want)


def test_a_worker_that_fails_is_never_restarted(launch):
    # Gradient descent at 1e30 diverges at step 2 on every worker: exit 1.
    diverging = dataclasses.replace(
        CONFIG,
        optimizer="gd",
        learning_rate=1e30,
        lr_schedule="constant",
        epochs=1,
        steps_per_loop=1,
        deterministic=False,
    )
    launcher, output = launch(diverging, "--max_restarts=2")
    assert launcher.wait(timeout=300) == 1, output.tail()
    [line] = launcher_lines(output)
    assert re.fullmatch(r"\[launcher\] worker \d exited with code 1; stopping the job\n", line)
    # One attempt: the chief started its run once.
    assert len(re.findall(r"^\[worker 0\] .*run directory:", output.text(), re.M)) == 1
