"""Multi-worker training: real worker processes on 127.0.0.1, started by launch.local."""

import dataclasses
import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading

import psutil
import pytest
import tensorflow as tf

from launch import local
from launch.ports import free_ports
from tests.toolkit import (
    REPOSITORY,
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
from trainer.config import TrainConfig
from trainer.recipe import CHECKPOINT_DIR, train_and_evaluate
from trainer.run.files import RESULT_FILE

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 200 steps of a small model, as one job of 2 workers or one process on 2 replicas.
CONFIG = TrainConfig(
    hidden_sizes=(64,),
    batch_size=500,
    epochs=2,
    warmup_epochs=0.0,
    steps_per_loop=25,
    data_source="bundled",
)
ENV = environment()


def run_job(config: TrainConfig, sink, env=ENV, **options) -> int:
    """launch.local's job of 2 workers training `config`; its exit code."""
    return local.run_job(2, command_line(config), sink=sink, env=env, **options)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("multi_worker")
    output = io.StringIO()
    code = run_job(dataclasses.replace(CONFIG, logdir=str(logdir), run_name="job"), output)
    return logdir, code, output.getvalue()


def assert_same_weights_on_both_workers(output: str) -> None:
    fingerprints = {
        worker: value
        for worker, value in re.findall(
            r"\[worker (\d)\] .*weights fingerprint at step 200: (\w+)", output
        )
    }
    assert set(fingerprints) == {"0", "1"}
    assert fingerprints["0"] == fingerprints["1"]


def test_two_workers_train_to_the_same_weights(two_workers):
    logdir, code, output = two_workers
    assert code == 0, output[-3000:]
    assert_same_weights_on_both_workers(output)


def test_only_the_chief_writes_the_run(two_workers):
    logdir, _, output = two_workers
    run_dir = pathlib.Path(logdir, "job")
    assert json.loads((run_dir / RESULT_FILE).read_text())["steps"] == 200
    assert (run_dir / "export" / "200" / "saved_model.pb").exists()
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    # The other worker's checkpoints went to a private directory, deleted after each save.
    assert sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir()) == [
        "checkpoint",
        "ckpt-100.data-00000-of-00001",
        "ckpt-100.index",
        "ckpt-200.data-00000-of-00001",
        "ckpt-200.index",
    ]
    assert "test accuracy" in output


def test_two_workers_match_one_process_with_the_same_global_batch(two_workers, tmp_path):
    logdir, _, _ = two_workers
    single = train_and_evaluate(
        dataclasses.replace(CONFIG, logdir=str(tmp_path), strategy="mirrored", cpu_replicas=2)
    )
    want = checkpoint_tensors(checkpoint_path(single.run_dir, 200))
    assert len(want) == 4
    assert_same_tensors(
        checkpoint_tensors(checkpoint_path(os.path.join(logdir, "job"), 200)),
        want,
        rtol=1e-4,
        atol=1e-6,
    )


def test_two_workers_accumulating_micro_batches_take_the_steps_of_whole_batches(
    two_workers, tmp_path
):
    logdir, _, _ = two_workers
    output = io.StringIO()
    job = dataclasses.replace(CONFIG, logdir=str(tmp_path), run_name="job", grad_accum_steps=5)
    assert run_job(job, output) == 0, output.getvalue()[-3000:]
    assert_same_weights_on_both_workers(output.getvalue())
    assert_same_tensors(
        checkpoint_tensors(checkpoint_path(str(tmp_path / "job"), 200)),
        checkpoint_tensors(checkpoint_path(os.path.join(logdir, "job"), 200)),
        rtol=1e-4,
        atol=1e-6,
    )


def test_muon_clipped_and_averaged_across_two_workers_matches_one_process(tmp_path):
    # Muon orthogonalizes the summed gradient on every worker; the clip decision and the
    # averages must be the same everywhere, and as on one machine with the same global batch.
    config = dataclasses.replace(CONFIG, optimizer="muon", clip_global_norm=0.5, ema_decay=0.9)
    output = io.StringIO()
    job = dataclasses.replace(config, logdir=str(tmp_path / "job"), run_name="job")
    assert run_job(job, output) == 0, output.getvalue()[-3000:]
    assert_same_weights_on_both_workers(output.getvalue())
    single = train_and_evaluate(
        dataclasses.replace(
            config, logdir=str(tmp_path / "single"), strategy="mirrored", cpu_replicas=2
        )
    )
    want = checkpoint_tensors(checkpoint_path(single.run_dir, 200), WEIGHTS_AND_OPTIMIZER)
    assert any("averages" in key for key in want) and any("clipped_steps" in key for key in want)
    got = checkpoint_tensors(
        checkpoint_path(str(tmp_path / "job" / "job"), 200), WEIGHTS_AND_OPTIMIZER
    )
    assert_same_tensors(got, want, rtol=1e-4, atol=1e-6)


def run_job_signalled(config: TrainConfig, pause: Pause, signum, **options) -> tuple[int, str]:
    """Runs the job, sends `signum` to the worker `pause` holds while it is held, and lets it
    go on: the signal lands at a known step whatever the machine's speed. The job's exit code
    and output."""
    output, result = io.StringIO(), {}
    job = threading.Thread(
        daemon=True,
        target=lambda: result.setdefault(
            "code", run_job(config, output, env={**ENV, **pause.env()}, **options)
        ),
    )
    job.start()
    os.kill(pause.wait(job.is_alive), signum)
    pause.release()
    job.join(timeout=300)
    assert not job.is_alive(), "the launcher hung: " + output.getvalue()[-3000:]
    return result["code"], output.getvalue()


def test_a_dead_worker_stops_the_whole_job_fast(tmp_path):
    config = dataclasses.replace(CONFIG, logdir=str(tmp_path), checkpoint_every_steps=25)
    code, output = run_job_signalled(
        config, Pause(tmp_path / "pause", 25, task=1), signal.SIGKILL, grace_seconds=5
    )
    assert code == 128 + signal.SIGKILL, output[-3000:]
    assert "[launcher] worker 1 exited with code -9; stopping the job" in output
    assert not psutil.Process().children()  # No worker left behind.


def resumed_steps(output: str) -> dict[str, int]:
    """{worker: the step it resumed from}, checking each names the checkpoint of that step."""
    return {
        worker: int(step)
        for worker, path_step, step in re.findall(
            r"\[worker (\d)\] .*resumed from \S+ckpt-(\d+) at step (\d+)", output
        )
        if path_step == step
    }


def stopped_step(output: str) -> int:
    """The step at which both workers stopped on SIGTERM (the same on both)."""
    stopped = re.findall(r"\[worker (\d)\] .*SIGTERM: stopped at step (\d+)", output)
    assert sorted(worker for worker, _ in stopped) == ["0", "1"], output[-3000:]
    assert len({step for _, step in stopped}) == 1, output[-3000:]
    return int(stopped[0][1])


def preempt(config: TrainConfig, at: int | None) -> tuple[int, str]:
    """Runs the job, SIGTERMs worker 1 while it is held after saving ckpt-<at> (None: as its run
    starts); the step all stopped at, and the output."""
    code, output = run_job_signalled(
        config, Pause(pathlib.Path(config.logdir, f"pause{at}"), at, task=1), signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM, output[-3000:]
    return stopped_step(output), output


def test_preempted_twice_with_a_corrupt_checkpoint_between_the_job_resumes_right(tmp_path):
    config = dataclasses.replace(
        CONFIG,
        logdir=str(tmp_path),
        run_name="job",
        steps_per_loop=5,
        checkpoint_every_steps=25,
    )
    checkpoints = pathlib.Path(tmp_path, "job", CHECKPOINT_DIR)
    first, _ = preempt(config, at=50)
    assert first >= 50
    listed = tf.train.get_checkpoint_state(checkpoints).all_model_checkpoint_paths
    assert listed[-1].endswith(f"ckpt-{first}")
    before_first = int(listed[-2].rsplit("-", 1)[1])
    # No worker's private save is left behind to be read back later.
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]

    # The newest checkpoint corrupted (a disk that filled up): every worker goes back to the
    # one before it, which TensorFlow's preemption handler must not undo.
    for data_file in checkpoints.glob(f"ckpt-{first}.data-*"):
        data_file.write_bytes(data_file.read_bytes()[:100])
    second, output = preempt(config, at=100)
    assert resumed_steps(output) == {"0": before_first, "1": before_first}
    assert 100 <= second < 200

    output = io.StringIO()
    assert run_job(config, output) == 0, output.getvalue()[-3000:]
    assert resumed_steps(output.getvalue()) == {"0": second, "1": second}
    assert json.loads(pathlib.Path(tmp_path, "job", RESULT_FILE).read_text())["steps"] == 200
    assert not [p.name for p in checkpoints.iterdir() if p.name.startswith(".")]


def test_a_sigterm_while_the_job_starts_stops_it_at_its_first_step(tmp_path):
    # Signalled as it starts: after the strategy exists (whose runtime has a SIGTERM handler of
    # its own), before the checkpoint is restored and the watch begins.
    config = dataclasses.replace(CONFIG, logdir=str(tmp_path), run_name="job", steps_per_loop=5)
    step, _ = preempt(config, at=None)
    assert 0 < step < 100  # Within the first epoch, not at its end.
    latest = tf.train.latest_checkpoint(os.path.join(tmp_path, "job", CHECKPOINT_DIR))
    assert latest.endswith(f"ckpt-{step}")


def test_a_ctrl_c_to_one_worker_stops_every_worker_at_one_step(tmp_path):
    # TensorFlow's handler coordinates SIGTERM only: the worker given Ctrl-C passes it on as
    # one, stops with the others, and names what it was given.
    config = dataclasses.replace(CONFIG, logdir=str(tmp_path), run_name="job", steps_per_loop=5)
    code, output = run_job_signalled(config, Pause(tmp_path / "pause", 100, task=1), signal.SIGINT)
    assert code in (128 + signal.SIGINT, 128 + signal.SIGTERM), output[-3000:]
    stops = dict(re.findall(r"\[worker (\d)\] .*?(\S+: stopped at step \d+) ", output))
    step = stops.get("0", "").removeprefix("SIGTERM: stopped at step ")
    assert stops == {
        "0": f"SIGTERM: stopped at step {step}",
        "1": f"Ctrl-C: stopped at step {step}",
    }, output[-3000:]
    assert "Traceback" not in output
    latest = tf.train.latest_checkpoint(os.path.join(tmp_path, "job", CHECKPOINT_DIR))
    assert latest.endswith(f"ckpt-{step}")


def test_a_diverging_job_retries_from_the_same_checkpoint_on_every_worker(tmp_path):
    # Gradient descent at 1e30: step 1 is finite, step 2 is not, on every worker at once
    # (gradients are summed across them). Only the chief has seen ckpt-1 being written.
    config = dataclasses.replace(
        CONFIG,
        logdir=str(tmp_path),
        optimizer="gd",
        learning_rate=1e30,
        lr_schedule="constant",
        epochs=1,
        steps_per_loop=1,
        checkpoint_every_steps=1,
        nonfinite_retries=2,
    )
    output = io.StringIO()
    assert run_job(config, output) == 1
    text = output.getvalue()
    for worker in "01":
        retries = re.findall(rf"\[worker {worker}\] .*resumed from \S+ckpt-1 at step 1", text)
        assert len(retries) == 2, text[-3000:]
        assert re.search(
            rf"\[worker {worker}\] .*step 2: the loss or a gradient is not "
            "finite.*stopping",
            text,
        ), text[-3000:]


# A worker whose TFDS MNIST is tfds.testing's random images: the real entry point under it.
_ON_MOCK_TFDS = (
    "import tensorflow_datasets as tfds\nfrom absl import app\n"
    "from data import mnist\nfrom trainer import train\n"
    "mnist.tfds_is_prepared = lambda data_dir: True\n"
    "with tfds.testing.mock_data(num_examples=12_000):\n    app.run(train.main)"
)


def test_workers_holding_different_data_stop_naming_the_odd_one(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    args = [
        "--strategy=multi_worker",
        *command_line(
            dataclasses.replace(CONFIG, logdir=str(tmp_path), run_name="job", data_source="tfds")
        ),
    ]
    workers = [
        start_module(
            "trainer.train",
            *args,
            "--data_source=bundled",
            env=environment(
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})
            ),
        ),
        subprocess.Popen(
            [sys.executable, "-c", _ON_MOCK_TFDS, *args],
            cwd=REPOSITORY,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(
                TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}})
            ),
        ),
    ]
    # Each names its program as started: the entry point, and worker 1's wrapper (python -c).
    for program, worker in zip(["trainer.train", "-c"], workers):
        done = finish(worker, timeout=180)
        assert done.returncode == 1, done.stderr[-3000:]
        assert re.search(
            rf"^{re.escape(program)}: error: worker 1 hold\(s\) other MNIST than the chief ",
            done.stderr,
            re.MULTILINE,
        ), done.stderr[-3000:]
    assert not pathlib.Path(tmp_path, "job").exists()  # Stopped before writing anything.
