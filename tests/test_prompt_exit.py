"""The trainer's process ends within seconds of its last line, preempted or finished.

Schedulers kill 30 s after SIGTERM and restart a job only once it has exited; the trainer used
to linger up to a minute after its last line (trainer/exiting.py). One run is stopped twice
and resumed: SIGTERM as an epoch starts, SIGTERM just before an epoch ends (after ten epochs
in that process: the longer a train iterator ran, the longer its deletion used to take), then a
normal end.
"""

import dataclasses
import os
import re
import signal
import subprocess
import time

import tensorflow as tf

from tests.toolkit import (WEIGHTS_AND_OPTIMIZER, checkpoint_tensors, command_line,
                           start_module)
from trainer.config import TrainConfig
from trainer.preemption import PREEMPTED_EXIT_CODE
from trainer.train_lib import CHECKPOINT_DIR

# 100 steps an epoch, 10 a compiled call: a SIGTERM stops the run within 10 steps.
CONFIG = TrainConfig(strategy="mirrored", cpu_replicas=2, hidden_sizes=(64,), batch_size=500,
                     epochs=30, learning_rate=3e-3, warmup_epochs=0.0, steps_per_loop=10,
                     data_source="bundled", deterministic=True, run_name="run")
TOTAL_STEPS = 3000
# A behaviour bound with a wide margin (it exits in about 0.2 s), not a speed benchmark.
EXIT_SECONDS = 5.0


@dataclasses.dataclass
class Ended:
    returncode: int
    output: str
    seconds_after_last_line: float


def run(logdir, sigterm_when=None) -> Ended:
    """Runs the trainer on CONFIG. After each line, `sigterm_when(lines)`, given every
    (time read, line) so far, returns None or how many seconds from then to send SIGTERM
    (once)."""
    config = dataclasses.replace(CONFIG, logdir=str(logdir))
    process = start_module("trainer.train", *command_line(config), stderr=subprocess.STDOUT)
    lines, signalled = [], False
    for line in process.stdout:
        lines.append((time.monotonic(), line))
        delay = None if signalled or not sigterm_when else sigterm_when(lines)
        if delay is not None:
            time.sleep(delay)  # The next line may come only after the moment is due.
            process.send_signal(signal.SIGTERM)
            signalled = True
    returncode = process.wait(timeout=300)
    return Ended(returncode, "".join(line for _, line in lines),
                 time.monotonic() - lines[-1][0])


def as_the_second_epoch_starts(lines):
    return 0.0 if re.search(r"saved .*ckpt-100$", lines[-1][1].strip()) else None


def just_before_an_epoch_ends(lines, epochs=10):
    """Once `epochs` epochs have ended in this process: when the next one has run for nine
    tenths of the time the last one took."""
    ends = [at for at, line in lines if re.match(r"epoch \d+/", line)]
    if len(ends) == epochs and lines[-1][0] == ends[-1]:
        return 0.9 * (ends[-1] - ends[-2])
    return None


def assert_stopped_with_a_resumable_checkpoint(ended: Ended, run_dir: str) -> int:
    assert ended.returncode == PREEMPTED_EXIT_CODE, ended.output[-3000:]
    assert ended.seconds_after_last_line < EXIT_SECONDS, ended.output[-1000:]
    step = int(re.search(r"SIGTERM: stopped at step (\d+) of", ended.output).group(1))
    latest = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINT_DIR))
    assert latest.endswith(f"ckpt-{step}")
    state = checkpoint_tensors(latest, WEIGHTS_AND_OPTIMIZER)  # Every tensor reads back.
    assert state["optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"] == step
    return step


def resumed_step(output: str) -> int:
    return int(re.search(r"resumed from \S+ at step (\d+)", output).group(1))


def test_the_process_exits_promptly_after_sigterm_and_after_its_end(tmp_path):
    run_dir = os.path.join(tmp_path, "run")
    ended = run(tmp_path, as_the_second_epoch_starts)
    first_stop = assert_stopped_with_a_resumable_checkpoint(ended, run_dir)
    assert 100 < first_stop < TOTAL_STEPS

    ended = run(tmp_path, just_before_an_epoch_ends)
    assert resumed_step(ended.output) == first_stop  # The checkpoint was whole.
    second_stop = assert_stopped_with_a_resumable_checkpoint(ended, run_dir)
    assert first_stop < second_stop < TOTAL_STEPS

    ended = run(tmp_path)
    assert ended.returncode == 0, ended.output[-3000:]
    assert resumed_step(ended.output) == second_stop
    assert f"after {TOTAL_STEPS} steps" in ended.output
    assert ended.seconds_after_last_line < EXIT_SECONDS, ended.output[-1000:]
