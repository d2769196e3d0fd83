"""What the tests share: the repository, our programs as subprocesses, what a run wrote (events
and checkpoints), and trainer command lines built from a TrainConfig. (Free ports come from
launch/ports.py, as for the launchers.)

A plain module rather than conftest.py, so that a test imports what it uses by name
(`from tests.toolkit import run_module`); pytest discourages importing conftest.py itself.
"""

import dataclasses
import glob
import os
import pathlib
import subprocess
import sys

import numpy as np
import tensorflow as tf

from trainer.config import TrainConfig
from trainer.train_lib import CHECKPOINT_DIR

REPO = pathlib.Path(__file__).resolve().parents[1]


# Our programs as subprocesses.

def environment(**overrides: str) -> dict[str, str]:
    """The environment of a program started by a test: ours, TensorFlow's C++ logging quiet,
    and the repository importable from any working directory."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO), **overrides)


def start_module(module: str, *args, wrapper: tuple[str, ...] = (),
                 **popen_options) -> subprocess.Popen:
    """Starts `python -m <module> <args>` from the repository, its stdout and stderr as text
    pipes; `popen_options` (cwd, env, stdout, stderr, ...) replace those defaults. `wrapper`
    is a command that runs it (`unshare --user`, `setpriv ...`)."""
    options = dict(cwd=REPO, env=environment(), stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)
    return subprocess.Popen([*wrapper, sys.executable, "-m", module, *map(str, args)],
                            **{**options, **popen_options})


def finish(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """Waits for a started process (killing it if it outlives `timeout` seconds) and returns its
    exit code and output."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_module(module: str, *args, timeout: float = 300,
               **popen_options) -> subprocess.CompletedProcess:
    """Runs `python -m <module> <args>` to its end (see start_module)."""
    return finish(start_module(module, *args, **popen_options), timeout)


# Trainer command lines.

def command_line(config: TrainConfig) -> list[str]:
    """The trainer flags that give `config`: `--<field>=<value>` for each field not at its
    default, so one TrainConfig serves a test both in process and on a command line."""
    defaults = TrainConfig().as_flags()
    return [f"--{name}={value}" for name, value in config.as_flags().items()
            if defaults.get(name) != value]


# What a run wrote.

@dataclasses.dataclass
class Summary:
    """One tag in a run's event files: its TensorBoard plugin, and the step and value of each
    event, in the order written."""
    plugin: str
    steps: list[int]
    values: list[np.ndarray]


def summaries(run_dir) -> dict[str, Summary]:
    """{tag: Summary} from every event file directly in `run_dir`, as TensorBoard reads a run
    (a resumed run adds another file). The plugin comes with a tag's first event."""
    found = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                summary = found.setdefault(
                    value.tag, Summary(value.metadata.plugin_data.plugin_name, [], []))
                summary.steps.append(event.step)
                summary.values.append(tf.make_ndarray(value.tensor))
    return found


def scalars(run_dir) -> dict[str, list[float]]:
    """{tag: [value per event]} of the scalar summaries in `run_dir`."""
    return {tag: [float(v) for v in summary.values]
            for tag, summary in summaries(run_dir).items() if summary.plugin == "scalars"}


def checkpoint_path(run_dir, step: int) -> str:
    """The trainer's checkpoint of `step` in a run directory."""
    return os.path.join(run_dir, CHECKPOINT_DIR, f"ckpt-{step}")


WEIGHTS = ("model/",)
WEIGHTS_AND_OPTIMIZER = ("model/", "optimizer/")  # Its slots and step counter too.


def checkpoint_tensors(path: str, scopes=WEIGHTS) -> dict[str, np.ndarray]:
    """{key: value} of the tensors of checkpoint `path` (a ckpt-N prefix) whose key starts with
    one of `scopes`: the model's weights by default."""
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key.startswith(tuple(scopes))}


def assert_same_tensors(got: dict, want: dict, rtol: float = 0.0, atol: float = 0.0) -> None:
    """The same keys, and equal values (within rtol and atol if given)."""
    assert want and got.keys() == want.keys(), (sorted(got), sorted(want))
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)
