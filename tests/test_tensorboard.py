"""A real TensorBoard server on 127.0.0.1 reads a real training run and a convergence run."""

import dataclasses
import json
import pathlib
import subprocess
import time
import urllib.request

import pytest

from launch.ports import free_ports
from tests.toolkit import start_module
from trainer.config import TrainConfig
from trainer.convergence.settings import SuiteSettings
from trainer.convergence.suite import run_and_report
from trainer.recipe import train_and_evaluate

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

TRAIN = TrainConfig(
    strategy="mirrored",
    cpu_replicas=2,
    hidden_sizes=(32,),
    batch_size=1000,
    epochs=1,
    warmup_epochs=0.0,
    steps_per_loop=10,
    profile_steps=(10, 20),
    data_source="bundled",
    run_name="train",
)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tensorboard")
    train_and_evaluate(dataclasses.replace(TRAIN, logdir=str(logdir)))
    run_and_report(SuiteSettings(max_iters=50), str(logdir / "convergence"))
    [port] = free_ports(1)
    process = start_module(
        "tensorboard.main",
        f"--logdir={logdir}",
        "--host=127.0.0.1",
        f"--port={port}",
        "--load_fast=false",
        "--reload_interval=1",
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # Up, and done loading both runs' events.
            try:
                runs = get_json(f"{url}/data/runs")
                if "train" in runs and "convergence/adam@0.1" in runs:
                    break
            except OSError:
                pass
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "TensorBoard did not load the runs in 120 s"
            time.sleep(0.5)
        yield logdir, url
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode is not None  # Shut down cleanly, not left running.


def test_tensorboard_lists_every_run(server):
    _, url = server
    runs = get_json(f"{url}/data/runs")
    assert "train" in runs and "convergence" in runs
    assert {
        f"convergence/{o}@{lr}"
        for o in ("gd", "momentum", "adam")
        for lr in ("0.001", "0.01", "0.1")
    } <= set(runs)


def test_tensorboard_serves_the_scalar_tags(server):
    _, url = server
    tags = get_json(f"{url}/data/plugin/scalars/tags")
    assert {
        "train/loss",
        "train/accuracy",
        "eval/loss",
        "eval/accuracy",
        "test/accuracy",
        "optim/learning_rate",
        "optim/grad_norm",
        "perf/examples_per_sec",
    } <= set(tags["train"])
    assert {"x", "loss"} <= set(tags["convergence/momentum@0.01"])
    points = get_json(f"{url}/data/plugin/scalars/scalars?run=convergence/momentum@0.01&tag=x")
    assert len(points) == 50  # One x per iteration: [wall_time, step, value].


def test_tensorboard_serves_histograms_images_and_the_graph(server):
    _, url = server
    histograms = get_json(f"{url}/data/plugin/histograms/tags")["train"]
    assert "weights/mlp/dense_0/w" in histograms and "optimizer/adam/mlp_dense_0_w_m" in histograms
    images = get_json(f"{url}/data/plugin/images/tags")
    assert "eval/misclassified" in images["train"]
    assert {"loss_function", "paths/adam"} <= set(images["convergence"])
    graphs = get_json(f"{url}/data/plugin/graphs/info")
    assert "train" in graphs


def test_the_profile_window_is_recorded(server):
    logdir, _ = server
    traces = list(pathlib.Path(logdir, "train", "plugins", "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
