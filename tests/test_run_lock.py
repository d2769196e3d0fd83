"""One trainer per run directory: a second one, started while the first trains, is refused in
one line naming the first, and writes nothing; the lock dies with its holder, kill -9 included.
"""

import dataclasses
import errno
import io
import os
import re
import signal
import socket
import subprocess

import pytest

from launch import local
from tests.toolkit import Pause, command_line, environment, finish, start_module
from trainer.config import TrainConfig
from trainer.run import lock

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

CONFIG = TrainConfig(
    hidden_sizes=(32,),
    batch_size=500,
    epochs=2,
    warmup_epochs=0.0,
    steps_per_loop=10,
    checkpoint_every_steps=50,
    data_source="bundled",
    run_name="run",
)
IN_USE = re.compile(
    r"^trainer\.train: error: (\S+) is in use by another trainer \(pid (\d+) "
    r"on (\S+), since [\d\-T:+]+\); let it finish or stop it, or train into "
    r"another --run_name or --logdir$",
    re.MULTILINE,
)


def start(logdir, env=None) -> subprocess.Popen:
    config = dataclasses.replace(CONFIG, logdir=str(logdir))
    return start_module("trainer.train", *command_line(config), env=env or environment())


def files_under(directory) -> dict[str, float]:
    return {
        os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(directory)
        for name in names
    }


def test_a_second_trainer_on_a_run_in_use_is_refused_naming_the_first(tmp_path):
    pause = Pause(tmp_path / "pause", 50)  # The first holds still, its run in use.
    first = start(tmp_path / "runs", env={**environment(), **pause.env()})
    held_pid = pause.wait(first)
    before = files_under(tmp_path / "runs")

    second = finish(start(tmp_path / "runs"))
    assert second.returncode == 1, second.stderr[-3000:]
    refusal = IN_USE.search(second.stderr)
    assert refusal, second.stderr[-3000:]
    assert refusal.groups() == (str(tmp_path / "runs" / "run"), str(held_pid), socket.gethostname())
    assert files_under(tmp_path / "runs") == before  # Nothing written, nothing touched.

    pause.release()
    done = finish(first)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after 200 steps" in done.stdout


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    pause = Pause(tmp_path / "pause", 50)
    first = start(tmp_path / "runs", env={**environment(), **pause.env()})
    pause.wait(first)
    first.send_signal(signal.SIGKILL)
    finish(first)
    assert (tmp_path / "runs" / "run" / lock.LOCK_FILE).exists()  # The file stays...
    rerun = finish(start(tmp_path / "runs"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # ...its lock went with its holder.
    assert re.search(r"resumed from \S+ckpt-50 at step 50", rerun.stderr), rerun.stderr[-3000:]


def test_every_worker_of_a_second_job_stops_in_one_line(tmp_path):
    config = dataclasses.replace(CONFIG, logdir=str(tmp_path))
    run_dir = tmp_path / config.run_name
    run_dir.mkdir()
    output = io.StringIO()
    with lock.hold(str(run_dir)):  # This process is the trainer already there.
        code = local.run_job(2, command_line(config), sink=output, env=environment())
    assert code == 1, output.getvalue()[-3000:]
    text = output.getvalue()
    assert re.search(
        rf"\[worker 0\] trainer\.train: error: {run_dir} is in use by another "
        rf"trainer \(pid {os.getpid()} ",
        text,
    ), text[-3000:]
    assert re.search(
        rf"\[worker 1\] trainer\.train: error: {run_dir} is in use by another "
        r"trainer \(the chief's error names it\)",
        text,
    ), text[-3000:]
    assert sorted(p.name for p in run_dir.iterdir()) == [lock.LOCK_FILE]


def test_a_filesystem_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock.fcntl, "flock", no_locks)
    with lock.hold(str(tmp_path)):
        pass
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot lock {tmp_path / lock.LOCK_FILE} ({os.strerror(errno.ENOLCK)}): a second "
        "trainer on this run directory would not be refused"
    ]
