"""Benchmark section: what gradient accumulation saves in memory and costs in speed.

    accumulation   peak resident memory of training at a large global batch with
                   --grad_accum_steps K = 1 and K = 8, and examples per second of each

Each K trains in a process of its own (`python -m trainer.bench.accumulation BATCH K STEPS`,
which prints its measures as JSON), so that the peak is its own and not the bench's. The
memory training adds is that peak less the resident memory once the train state is built.
Accumulation splits the activations; the input pipeline's whole global batches (150 MB each
at 49,152 images, a few of them prefetched) are the same for every K.
"""

import json
import os
import resource
import subprocess
import sys
import time

import psutil

from data import mnist
from trainer.common.paths import REPOSITORY
from trainer.config import TrainConfig
from trainer.distribution import strategies
from trainer.step.inputs import Inputs
from trainer.step.state import build_train_state

BATCH_SIZE = 49152  # Nearly the whole training set: one step an epoch.
STEPS = 3  # The first compiles and warms up; the others are timed.


def memory_and_speed(batch_size: int = BATCH_SIZE, steps: int = STEPS, ks=(1, 8)) -> dict:
    """{k<K>_peak_rss_mb, k<K>_training_rss_mb, k<K>_examples_per_sec} for each K, and the
    last K's memory and seconds per example against K = 1's."""
    results = {}
    for k in ks:
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(batch_size), str(k), str(steps)],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"accumulation K={k}: {done.stderr.strip()[-2000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        results.update({f"k{k}_{name}": value for name, value in measured.items()})
    first, last = ks[0], ks[-1]
    results[f"k{last}_over_k{first}_training_rss"] = (
        results[f"k{last}_training_rss_mb"] / results[f"k{first}_training_rss_mb"]
    )
    results[f"k{last}_over_k{first}_seconds_per_example"] = (
        results[f"k{first}_examples_per_sec"] / results[f"k{last}_examples_per_sec"]
    )
    return results


def _measure(batch_size: int, k: int, steps: int) -> dict:
    """Trains `steps` steps of the default MLP at global batch `batch_size` in K micro-batches."""
    strategy = strategies.create_strategy("one_device")
    config = TrainConfig(
        batch_size=batch_size, grad_accum_steps=k, warmup_epochs=0.0, data_source="bundled"
    )
    inputs = Inputs(strategy, mnist.load("bundled"), batch_size, config.seed, k)
    state = build_train_state(strategy, config, inputs.steps_per_epoch)
    batches = inputs.train_batches()
    built = psutil.Process().memory_info().rss / 2**20
    state.train(batches, 1)
    start = time.perf_counter()
    state.train(batches, steps - 1)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux.
    return {
        "peak_rss_mb": peak,
        "training_rss_mb": peak - built,
        "examples_per_sec": (steps - 1) * batch_size / seconds,
    }


if __name__ == "__main__":
    print(json.dumps(_measure(*map(int, sys.argv[1:4]))), flush=True)
    os._exit(0)  # The input pipeline's iterator can take a minute to delete.
