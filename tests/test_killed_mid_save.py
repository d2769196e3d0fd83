"""A process SIGKILLed while it saves a checkpoint leaves TensorFlow's `ckpt-<step>_temp/`, never
listed and never deleted; the chief of the next run removes it, in one line, and nothing else.

The leftover is made for real: a process saves a 128 MB checkpoint again and again through
RunCheckpoints, and is killed once its save has begun writing shards into `ckpt-<step>_temp/`,
which lasts a tenth of a second or more each save.
"""

import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import tensorflow as tf

from tests.toolkit import environment
from trainer.common.paths import REPOSITORY
from trainer.run.checkpoints import RunCheckpoints

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

SHAPE = [32, 1024, 1024]  # 128 MB of float32.
SAVER = f"""
import sys
import tensorflow as tf
from trainer.run.checkpoints import RunCheckpoints
checkpoint = tf.train.Checkpoint(v=tf.Variable(tf.zeros({SHAPE})))
checkpoints = RunCheckpoints(checkpoint, sys.argv[1], max_to_keep=1)
for step in range(1, 10_000):
    checkpoints.save(step)
    print("saved", step, flush=True)
"""


def killed_mid_save(directory: str, timeout: float = 120) -> None:
    """Saves ckpt-1 whole, then SIGKILLs the saver as a later save writes its shards."""
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, directory],
        cwd=REPOSITORY,
        env=environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert saver.stdout.readline() == "saved 1\n"
        deadline = time.monotonic() + timeout
        while not any(
            name.endswith("_temp") and os.listdir(os.path.join(directory, name))
            for name in os.listdir(directory)
        ):
            assert saver.poll() is None and time.monotonic() < deadline
    finally:
        saver.send_signal(signal.SIGKILL)
        saver.wait()


def test_the_chief_removes_what_a_save_killed_midway_left_and_nothing_else(tmp_path, caplog):
    directory = str(tmp_path / "checkpoints")
    killed_mid_save(directory)
    [temp] = [name for name in os.listdir(directory) if name.endswith("_temp")]
    assert re.fullmatch(r"ckpt-\d+_temp", temp)
    assert all(name.startswith("part-") for name in os.listdir(os.path.join(directory, temp)))
    listed = tf.train.get_checkpoint_state(directory).all_model_checkpoint_paths
    # The state file, as an atomic rewrite killed before its rename leaves it; and what is ours
    # only by a look-alike name.
    state_tmp = f"checkpoint.tmp{uuid.uuid4().hex}"
    for name in (state_tmp, "notes_temp", "ckpt-best_temp"):
        open(os.path.join(directory, name), "w").close()
    kept = sorted(set(os.listdir(directory)) - {temp, state_tmp})

    checkpoint = tf.train.Checkpoint(v=tf.Variable(tf.zeros(SHAPE)))
    RunCheckpoints(checkpoint, directory, 1, is_chief=False, task="worker 1")
    assert temp in os.listdir(directory)  # Another worker leaves the chief's directory alone.
    caplog.set_level(logging.INFO, logger="absl")
    checkpoints = RunCheckpoints(checkpoint, directory, 1)
    assert sorted(os.listdir(directory)) == kept
    assert [r.message for r in caplog.records if "removed" in r.message] == [
        f"removed {', '.join(sorted([temp, state_tmp]))} from {directory}: left by a save "
        "that was killed midway, never listed"
    ]
    assert checkpoints.manager.checkpoints == list(listed)
    assert checkpoints.restore() == listed[-1]
