"""What the tests share: the repository, our programs as subprocesses, what a run wrote (events
and checkpoints), and trainer command lines built from a TrainConfig. (Free ports come from
launch/ports.py, as for the launchers.)

A plain module rather than conftest.py, so that a test imports what it uses by name
(`from tests.toolkit import run_module`); pytest discourages importing conftest.py itself.
"""

import dataclasses
import glob
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from trainer.common.paths import REPOSITORY
from trainer.config import TrainConfig
from trainer.recipe import CHECKPOINT_DIR

# Our programs as subprocesses.


def environment(**overrides: str) -> dict[str, str]:
    """The environment of a program started by a test: ours, TensorFlow's C++ logging quiet,
    and the repository importable from any working directory."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPOSITORY), **overrides)


def start_module(
    module: str, *args, wrapper: tuple[str, ...] = (), **popen_options
) -> subprocess.Popen:
    """Starts `python -m <module> <args>` from the repository, its stdout and stderr as text
    pipes; `popen_options` (cwd, env, stdout, stderr, ...) replace those defaults. `wrapper`
    is a command that runs it (`unshare --user`, `setpriv ...`)."""
    options = dict(
        cwd=REPOSITORY, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return subprocess.Popen(
        [*wrapper, sys.executable, "-m", module, *map(str, args)], **{**options, **popen_options}
    )


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


def run_module(
    module: str, *args, timeout: float = 300, **popen_options
) -> subprocess.CompletedProcess:
    """Runs `python -m <module> <args>` to its end (see start_module)."""
    return finish(start_module(module, *args, **popen_options), timeout)


class Pause:
    """Holds a trainer right after it saves ckpt-<step> (with step None: as its run starts,
    before it restores a checkpoint and trains), so a test acts at a known moment rather than
    at whatever step the machine has reached by then (tests/pause_hook/).

        pause = Pause(tmp_path / "pause", step=50, task=1)  # task: the worker's index
        process = start_module("trainer.train", ..., env={**environment(), **pause.env()})
        pause.wait(process)  # worker 1 has saved ckpt-50 and is held there
        process.send_signal(signal.SIGTERM)
        pause.release()
    """

    def __init__(self, directory, step: int | None, task: int = 0):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.step, self.task = step, task

    def env(self) -> dict[str, str]:
        """What to add to the environment of the trainer, or of the launcher that starts it."""
        return {
            "PYTHONPATH": os.pathsep.join(
                [str(REPOSITORY / "tests" / "pause_hook"), str(REPOSITORY)]
            ),
            "TRAINER_TEST_PAUSE": json.dumps(
                {"directory": str(self.directory), "step": self.step, "task": self.task}
            ),
        }

    def wait(self, process=None, timeout: float = 300) -> int:
        """Returns the held process's pid once it is held. `process` (a Popen, or a callable
        saying whether the job still runs) ending first is an AssertionError."""
        deadline = time.monotonic() + timeout
        paused = self.directory / "paused"
        while not paused.exists():
            running = (
                process.poll() is None if hasattr(process, "poll") else process is None or process()
            )
            assert running, f"ended before it was held ({self})"
            assert time.monotonic() < deadline, f"not held in {timeout} s ({self})"
            time.sleep(0.05)
        return int(paused.read_text().split()[0])

    def release(self) -> None:
        (self.directory / "release").touch()

    def release_once_signalled(self, timeout: float = 120) -> None:
        """Releases the held trainer once a stop signal has reached it: for a signal sent
        through a launcher (a sweep, Slurm), which passes it on in its own time; a trainer
        released before would train on past the step the test stops it at."""
        deadline = time.monotonic() + timeout
        while not (self.directory / "signalled").exists():
            assert time.monotonic() < deadline, f"no stop signal reached {self} in {timeout} s"
            time.sleep(0.05)
        self.release()

    def __str__(self):
        at = "as its run starts" if self.step is None else f"after saving ckpt-{self.step}"
        return f"worker {self.task} {at}"


# Trainer command lines.


def command_line(config: TrainConfig) -> list[str]:
    """The trainer flags that give `config`: `--<field>=<value>` for each field not at its
    default, so one TrainConfig serves a test both in process and on a command line."""
    defaults = TrainConfig().as_flags()
    return [
        f"--{name}={value}"
        for name, value in config.as_flags().items()
        if defaults.get(name) != value
    ]


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
                    value.tag, Summary(value.metadata.plugin_data.plugin_name, [], [])
                )
                summary.steps.append(event.step)
                summary.values.append(tf.make_ndarray(value.tensor))
    return found


def scalars(run_dir) -> dict[str, list[float]]:
    """{tag: [value per event]} of the scalar summaries in `run_dir`."""
    return {
        tag: [float(v) for v in summary.values]
        for tag, summary in summaries(run_dir).items()
        if summary.plugin == "scalars"
    }


def checkpoint_path(run_dir, step: int) -> str:
    """The trainer's checkpoint of `step` in a run directory."""
    return os.path.join(run_dir, CHECKPOINT_DIR, f"ckpt-{step}")


WEIGHTS = ("model/",)
WEIGHTS_AND_OPTIMIZER = ("model/", "optimizer/")  # Its slots and step counter too.


def checkpoint_tensors(path: str, scopes=WEIGHTS) -> dict[str, np.ndarray]:
    """{key: value} of the tensors of checkpoint `path` (a ckpt-N prefix) whose key starts with
    one of `scopes`: the model's weights by default."""
    reader = tf.train.load_checkpoint(path)
    return {
        key: reader.get_tensor(key)
        for key in reader.get_variable_to_shape_map()
        if key.startswith(tuple(scopes))
    }


def assert_same_tensors(got: dict, want: dict, rtol: float = 0.0, atol: float = 0.0) -> None:
    """The same keys, and equal values (within rtol and atol if given)."""
    assert want and got.keys() == want.keys(), (sorted(got), sorted(want))
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=key)
