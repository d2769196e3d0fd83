"""Multi-worker training: real worker processes on 127.0.0.1, started by launch.local."""

import dataclasses
import io
import json
import os
import pathlib
import re
import signal
import threading

import psutil
import pytest
import tensorflow as tf

from launch import local
from tests.toolkit import (assert_same_tensors, checkpoint_path, checkpoint_tensors, command_line,
                           environment)
from trainer.config import TrainConfig
from trainer.run_files import RESULT_FILE
from trainer.train_lib import CHECKPOINT_DIR, train_and_evaluate

# 200 steps of a small model, as one job of 2 workers or one process on 2 replicas.
CONFIG = TrainConfig(hidden_sizes=(64,), batch_size=500, epochs=2, warmup_epochs=0.0,
                     steps_per_loop=25, data_source="bundled")
ENV = environment()


def run_job(config: TrainConfig, sink, **options) -> int:
    """launch.local's job of 2 workers training `config`; its exit code."""
    return local.run_job(2, command_line(config), sink=sink, env=ENV, **options)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("multi_worker")
    output = io.StringIO()
    code = run_job(dataclasses.replace(CONFIG, logdir=str(logdir), run_name="job"), output)
    return logdir, code, output.getvalue()


def test_two_workers_train_to_the_same_weights(two_workers):
    logdir, code, output = two_workers
    assert code == 0, output[-3000:]
    fingerprints = {worker: value for worker, value in re.findall(
        r"\[worker (\d)\] .*weights fingerprint at step 200: (\w+)", output)}
    assert set(fingerprints) == {"0", "1"}
    assert fingerprints["0"] == fingerprints["1"]


def test_only_the_chief_writes_the_run(two_workers):
    logdir, _, output = two_workers
    run_dir = pathlib.Path(logdir, "job")
    assert json.loads((run_dir / RESULT_FILE).read_text())["steps"] == 200
    assert (run_dir / "export" / "200" / "saved_model.pb").exists()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    # The other worker's checkpoints went to a private directory, deleted after each save.
    assert sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir()) == [
        "checkpoint", "ckpt-100.data-00000-of-00001", "ckpt-100.index",
        "ckpt-200.data-00000-of-00001", "ckpt-200.index"]
    assert "test accuracy" in output


def test_two_workers_match_one_process_with_the_same_global_batch(two_workers, tmp_path):
    logdir, _, _ = two_workers
    single = train_and_evaluate(dataclasses.replace(
        CONFIG, logdir=str(tmp_path), strategy="mirrored", cpu_replicas=2))
    want = checkpoint_tensors(checkpoint_path(single.run_dir, 200))
    assert len(want) == 4
    assert_same_tensors(checkpoint_tensors(checkpoint_path(os.path.join(logdir, "job"), 200)),
                        want, rtol=1e-4, atol=1e-6)


class KillWorkerOne(io.StringIO):
    """An output sink that kills worker 1 once it has saved its first checkpoint."""

    def write(self, text):
        if text.startswith("[worker 1]") and "saved" in text:
            for child in psutil.Process().children():
                if '"index": 1' in child.environ().get("TF_CONFIG", ""):
                    child.send_signal(signal.SIGKILL)
        return super().write(text)


def test_a_dead_worker_stops_the_whole_job_fast(tmp_path):
    output = KillWorkerOne()
    done = threading.Event()
    result = {}

    def launch():
        result["code"] = run_job(dataclasses.replace(CONFIG, logdir=str(tmp_path), epochs=50),
                                 output, grace_seconds=5)
        done.set()

    threading.Thread(target=launch, daemon=True).start()
    assert done.wait(timeout=180), "the launcher hung after a worker died"
    assert result["code"] == 128 + signal.SIGKILL
    assert "[launcher] worker 1 exited with code -9; stopping the job" in output.getvalue()
    assert not psutil.Process().children()  # No worker left behind.


class SigtermWorkerOne(io.StringIO):
    """An output sink that sends SIGTERM to worker 1 once the chief has saved ckpt-50."""

    def write(self, text):
        if text.startswith("[worker 0]") and re.search(r"saved .*ckpt-50$", text.strip()):
            for child in psutil.Process().children():
                if '"index": 1' in child.environ().get("TF_CONFIG", ""):
                    child.send_signal(signal.SIGTERM)
        return super().write(text)


def test_sigterm_to_one_worker_checkpoints_all_and_the_rerun_resumes(tmp_path):
    config = dataclasses.replace(CONFIG, logdir=str(tmp_path), run_name="job", epochs=4,
                                 steps_per_loop=5, checkpoint_every_steps=50)
    output = SigtermWorkerOne()
    assert run_job(config, output) == 128 + signal.SIGTERM
    stopped = re.findall(r"\[worker (\d)\] .*SIGTERM: stopped at step (\d+)", output.getvalue())
    assert sorted(worker for worker, _ in stopped) == ["0", "1"]
    step = stopped[0][1]
    assert all(s == step for _, s in stopped) and int(step) >= 50
    latest = tf.train.latest_checkpoint(os.path.join(tmp_path, "job", CHECKPOINT_DIR))
    assert latest.endswith(f"ckpt-{step}")

    output = io.StringIO()
    assert run_job(config, output) == 0, output.getvalue()[-3000:]
    assert len(re.findall(rf"resumed from \S+ckpt-{step} at step {step}", output.getvalue())) == 2
    assert json.loads(pathlib.Path(tmp_path, "job", RESULT_FILE).read_text())["steps"] == 400
