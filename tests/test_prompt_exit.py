"""The trainer's process ends within seconds of its last line, preempted or finished.

Schedulers kill 30 s after SIGTERM and restart a job only once it has exited; TensorFlow's
teardown alone can take up to a minute (trainer/common/exiting.py skips it). One run is stopped
twice and resumed: SIGTERM as an epoch starts, SIGTERM just before an epoch ends (after ten
epochs in that process: the longer a train iterator runs, the longer its deletion takes, unless
skipped), then a normal end. Each SIGTERM is sent while the trainer is held at a known step
(tests/toolkit.py, Pause), so the step it stops at is known whatever the machine's speed.
"""

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import tensorflow as tf

from tests.toolkit import (
    WEIGHTS_AND_OPTIMIZER,
    Pause,
    checkpoint_tensors,
    command_line,
    environment,
    start_module,
)
from trainer.common.exit_codes import PREEMPTED_EXIT_CODE
from trainer.config import TrainConfig
from trainer.recipe import CHECKPOINT_DIR

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 100 steps an epoch, 10 a compiled call; a checkpoint every 70 steps gives one at step 1190,
# ten steps before an epoch ends.
CONFIG = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(64,),
    batch_size=500,
    epochs=30,
    learning_rate=3e-3,
    warmup_epochs=0.0,
    steps_per_loop=10,
    checkpoint_every_steps=70,
    data_source="bundled",
    deterministic=True,
    run_name="run",
)
TOTAL_STEPS = 3000
AS_THE_SECOND_EPOCH_STARTS = 100
JUST_BEFORE_AN_EPOCH_ENDS = 1190  # Eleven epochs into the process that resumed at 100.
# A behaviour bound with a wide margin (it exits in about 0.2 s), not a speed benchmark.
EXIT_SECONDS = 5.0


@dataclasses.dataclass
class Ended:
    returncode: int
    output: str
    seconds_after_last_line: float


def run(logdir, sigterm_at: int | None = None) -> Ended:
    """Runs the trainer on CONFIG; with `sigterm_at`, sends SIGTERM while it is held right
    after saving the checkpoint of that step."""
    config = dataclasses.replace(CONFIG, logdir=str(logdir))
    pause = Pause(logdir / f"pause{sigterm_at}", sigterm_at) if sigterm_at else None
    process = start_module(
        "trainer.train",
        *command_line(config),
        stderr=subprocess.STDOUT,
        env={**environment(), **(pause.env() if pause else {})},
    )
    lines = []  # (time read, line), read all along: a full pipe would block the trainer.
    reader = threading.Thread(
        target=lambda: lines.extend((time.monotonic(), line) for line in process.stdout)
    )
    reader.start()
    if pause:
        pause.wait(process)
        process.send_signal(signal.SIGTERM)
        pause.release()
    returncode = process.wait(timeout=300)
    reader.join()
    return Ended(returncode, "".join(line for _, line in lines), time.monotonic() - lines[-1][0])


def assert_stopped_with_a_resumable_checkpoint(ended: Ended, run_dir: str, step: int) -> None:
    assert ended.returncode == PREEMPTED_EXIT_CODE, ended.output[-3000:]
    assert ended.seconds_after_last_line < EXIT_SECONDS, ended.output[-1000:]
    assert f"SIGTERM: stopped at step {step} of" in ended.output, ended.output[-3000:]
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINT_DIR))
    assert latest.endswith(f"ckpt-{step}")
    state = checkpoint_tensors(latest, WEIGHTS_AND_OPTIMIZER)  # Every tensor reads back.
    assert state["optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"] == step


def resumed_step(output: str) -> int:
    return int(re.search(r"resumed from \S+ at step (\d+)", output).group(1))


def test_the_process_exits_promptly_after_sigterm_and_after_its_end(tmp_path):
    run_dir = os.path.join(tmp_path, "run")
    ended = run(tmp_path, AS_THE_SECOND_EPOCH_STARTS)
    assert_stopped_with_a_resumable_checkpoint(ended, run_dir, AS_THE_SECOND_EPOCH_STARTS)

    ended = run(tmp_path, JUST_BEFORE_AN_EPOCH_ENDS)
    assert resumed_step(ended.output) == AS_THE_SECOND_EPOCH_STARTS  # The checkpoint was whole.
    assert_stopped_with_a_resumable_checkpoint(ended, run_dir, JUST_BEFORE_AN_EPOCH_ENDS)

    ended = run(tmp_path)
    assert ended.returncode == 0, ended.output[-3000:]
    assert resumed_step(ended.output) == JUST_BEFORE_AN_EPOCH_ENDS
    assert f"after {TOTAL_STEPS} steps" in ended.output
    assert ended.seconds_after_last_line < EXIT_SECONDS, ended.output[-1000:]
