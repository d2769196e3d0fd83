"""Test session setup: quiet TensorFlow, and a CPU split into logical devices.

TensorFlow fixes its devices when it first starts, so the split happens here, once, before any
test runs: MirroredStrategy then has several replicas on a machine without GPUs, exactly the
code path a multi-GPU machine takes. What the tests share (our programs as subprocesses, event
and checkpoint readers, command lines from a TrainConfig) is in tests/toolkit.py.
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.distribution.strategies import split_cpu  # noqa: E402

CPU_DEVICES = 2
split_cpu(CPU_DEVICES)
assert len(tf.config.list_logical_devices("CPU")) == CPU_DEVICES


@pytest.fixture(autouse=True)
def _processes_only_in_slow_tests(request, monkeypatch):
    """`make test-fast` runs the tests not marked slow, which start no process, cluster or
    server; a test that starts one without the mark fails here, so the tier stays fast."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args[1] if len(args) > 1 else kwargs}): "
            "mark it @pytest.mark.slow"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
