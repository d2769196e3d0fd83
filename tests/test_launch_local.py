"""launch.local refuses bad trainer flags before any worker starts; its workers' ports are
closed to everyone outside the job, or the job needs --allow_exposed_ports; SIGTERM and Ctrl-C
reach every worker once and are never a reason to restart; Ctrl-Z suspends the whole job and
`fg` resumes it; a launcher that dies leaves nothing running; free ports for servers."""

import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import psutil
import pytest
import tensorflow as tf

from launch import local
from launch.ports import free_ports
from launch.trainer_args import LaunchError, check_trainer_args
from tests.job_processes import Output, kill_tree, running, tf_config, workers_of
from tests.toolkit import Pause, checkpoint_path, command_line, environment, finish, start_module
from trainer.common import terminal
from trainer.config import TrainConfig
from trainer.recipe import CHECKPOINT_DIR
from trainer.run.files import RESULT_FILE

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

BAD_TRAINER_ARGS = [
    (["--epoch=2"], "trainer argument --epoch=2: --epoch is not a trainer flag"),
    (
        ["--epochs=1", "--strategy=mirrored"],
        "trainer argument --strategy=mirrored: --strategy is set by launch.local "
        "(--strategy=multi_worker)",
    ),
    (["epochs=2"], "trainer argument 'epochs=2': expected --<trainer flag>=<value> after --"),
]


@pytest.mark.parametrize("trainer_args, message", BAD_TRAINER_ARGS)
def test_run_job_refuses_a_bad_trainer_flag_before_starting_a_worker(
    trainer_args, message, monkeypatch
):
    started = []
    monkeypatch.setattr(local.subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(LaunchError) as error:
        local.run_job(2, trainer_args)
    assert str(error.value).startswith(message)
    assert started == []


# TF_CPP_MIN_LOG_LEVEL unset, as in a user's shell: the launcher loads TensorFlow too.
USER_ENV = {k: v for k, v in environment().items() if k != terminal.CPP_LEVEL}


def test_the_command_line_refuses_each_bad_trainer_flag_with_one_line():
    started = [
        start_module("launch.local", "--workers=2", "--", *trainer_args, env=USER_ENV)
        for trainer_args, _ in BAD_TRAINER_ARGS
    ]
    for process, (_, message) in zip(started, BAD_TRAINER_ARGS):
        done = finish(process)
        assert done.returncode == 1
        assert done.stdout == ""  # No "[worker i]" line: no worker started.
        assert done.stderr.splitlines() == [done.stderr.strip()]
        assert done.stderr.startswith(f"launch.local: error: {message}")


def test_verbosity_passes_through_to_the_workers():
    # It changes what a worker's terminal shows, never what the run computes.
    assert check_trainer_args(["--verbosity=1", "--epochs=1"], local.SET_BY_LOCAL) == [
        "--verbosity=1",
        "--epochs=1",
    ]


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


# A job of 2 workers, 100 steps of a small model.
SMALL_JOB = TrainConfig(
    hidden_sizes=(32,),
    batch_size=500,
    epochs=1,
    warmup_epochs=0.0,
    steps_per_loop=25,
    data_source="bundled",
)
# A user namespace that maps no one may make no namespace (EPERM), as where unprivileged user
# namespaces are disabled; it leaves the network as it is.
NO_NAMESPACES = ("unshare", "--user")


def listening_worker(launcher: subprocess.Popen, timeout: float = 180) -> tuple[int, int]:
    """(pid, port) of worker 0 of a launch.local job once it listens: the port its own TF_CONFIG
    names, listening in the table of the worker's network namespace (/proc/<pid>/net)."""
    deadline = time.monotonic() + timeout
    while launcher.poll() is None and time.monotonic() < deadline:
        chief = workers_of(launcher).get(0)
        if chief and (config := tf_config(chief)):
            port = int(config["cluster"]["worker"][0].rsplit(":", 1)[1])
            if port in listening_ports(chief.pid):
                return chief.pid, port
        time.sleep(0.1)
    raise AssertionError(f"no worker listened (launcher exit code {launcher.poll()})")


def listening_ports(pid: int) -> set[int]:
    """The TCP ports in state LISTEN (0A) in the network namespace of process `pid`."""
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = pathlib.Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:  # The process exited, or there is no IPv6.
            continue
        ports |= {
            int(local_address.rsplit(":", 1)[1], 16)
            for _, local_address, _, state, *_ in map(str.split, rows)
            if state == "0A"
        }
    return ports


def wait_until(processes: list[psutil.Process], stopped: bool, timeout: float = 30) -> None:
    """Until every one of `processes` is stopped (state T), or none is."""
    deadline = time.monotonic() + timeout
    while any((p.status() == psutil.STATUS_STOPPED) != stopped for p in processes):
        states = {p.pid: p.status() for p in processes}
        assert time.monotonic() < deadline, f"not all {'stopped' if stopped else 'on'}: {states}"
        time.sleep(0.05)


def test_a_job_is_closed_to_outsiders_and_ctrl_z_suspends_it_whole(tmp_path):
    config = dataclasses.replace(SMALL_JOB, logdir=str(tmp_path), run_name="job")
    pause = Pause(tmp_path / "pause", step=100, task=0)  # The last step's checkpoint.
    launcher = start_module(
        "launch.local",
        "--workers=2",
        "--",
        *command_line(config),
        env={**environment(), **pause.env()},
        stderr=subprocess.STDOUT,
        process_group=0,  # As a shell starts a job: Ctrl-Z goes to this group.
    )
    try:
        pid, port = listening_worker(launcher)
        # The worker listens on the port in a network of its own; here, the same address is
        # closed: TensorFlow's client (experimental_connect_to_host) could not get in either.
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)

        pause.wait(launcher)
        job = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(True)]
        assert len(workers_of(launcher)) == 2 and len(job) == 4  # With the job's process.
        # Ctrl-Z and `fg` as a shell sends them, to the launcher's process group; then kill
        # -TSTP and kill -CONT to the launcher alone. The job is suspended and resumed whole.
        for send in (os.killpg, os.kill):
            send(launcher.pid, signal.SIGTSTP)
            wait_until(job, stopped=True)
            send(launcher.pid, signal.SIGCONT)
            wait_until(job, stopped=False)
        pause.release()
    finally:
        done = finish(launcher)
    assert done.returncode == 0, done.stdout[-3000:]
    assert json.loads((tmp_path / "job" / RESULT_FILE).read_text())["steps"] == 100
    fingerprints = dict(
        re.findall(r"\[worker (\d)\] .*weights fingerprint at step 100: (\w+)", done.stdout)
    )
    assert len(fingerprints) == 2 and len(set(fingerprints.values())) == 1


def test_without_a_private_network_the_job_is_refused_in_one_line():
    done = finish(
        start_module(
            "launch.local", "--workers=2", "--", "--epochs=1", wrapper=NO_NAMESPACES, env=USER_ENV
        )
    )
    assert done.returncode == 1
    assert done.stdout == ""  # No worker started.
    assert done.stderr.splitlines() == [
        "launch.local: error: cannot give the workers a private network (unshare(CLONE_NEWNET): "
        "Operation not permitted; unshare(CLONE_NEWUSER|CLONE_NEWNET): Operation not "
        "permitted); without one their gRPC servers listen on every interface and run any op "
        "anyone sends; --allow_exposed_ports runs the job anyway"
    ]


def test_allow_exposed_ports_runs_the_job_open_and_sigterm_to_the_launcher_stops_it(tmp_path):
    config = dataclasses.replace(
        SMALL_JOB,
        logdir=str(tmp_path),
        run_name="job",
        epochs=20,
        steps_per_loop=5,
        checkpoint_every_steps=25,
    )
    launcher = start_module(
        "launch.local",
        "--workers=2",
        "--allow_exposed_ports",
        "--max_restarts=2",
        "--",
        *command_line(config),
        wrapper=NO_NAMESPACES,
        stderr=subprocess.STDOUT,
    )
    output = []
    try:
        # What the warning says: the worker's port is open to this process.
        _, port = listening_worker(launcher)
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        for line in launcher.stdout:
            output.append(line)
            if re.fullmatch(r"\[worker 0\] .*saved \S+/ckpt-25", line.strip()):
                break
        launcher.send_signal(signal.SIGTERM)
    finally:
        done = finish(launcher)
    output = "".join(output) + done.stdout
    assert (
        "[launcher] warning: no private network for the workers (unshare(CLONE_NEWNET): " in output
    )
    # Passed on to every worker, which saved the same step and exited 143: a request to stop,
    # not a preemption to heal.
    assert done.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "restarting" not in output
    stopped = re.findall(r"\[worker (\d)\] .*SIGTERM: stopped at step (\d+)", output)
    assert sorted(worker for worker, _ in stopped) == ["0", "1"]
    assert len({step for _, step in stopped}) == 1
    assert os.path.exists(checkpoint_path(tmp_path / "job", int(stopped[0][1])) + ".index")


# 50,000 steps: a job that runs until it is stopped, saving every 25 steps.
LONG_JOB = dataclasses.replace(SMALL_JOB, epochs=500, steps_per_loop=5, checkpoint_every_steps=25)


@pytest.fixture
def start_paused(tmp_path):
    """start_paused(*launcher_flags, **popen_options) starts a launch.local job of LONG_JOB, its
    output merged into one pipe, and returns it and the Pause that holds its chief once it has
    saved ckpt-25. What is left of it when the test ends (failing) is killed."""
    launchers = []

    def start(*launcher_flags, **popen_options) -> tuple[subprocess.Popen, Pause]:
        pause = Pause(tmp_path / "pause", step=25, task=0)
        config = dataclasses.replace(LONG_JOB, logdir=str(tmp_path), run_name="job")
        launchers.append(
            start_module(
                "launch.local",
                "--workers=2",
                *launcher_flags,
                "--",
                *command_line(config),
                env={**environment(), **pause.env()},
                stderr=subprocess.STDOUT,
                **popen_options,
            )
        )
        return launchers[-1], pause

    yield start
    for launcher in launchers:
        kill_tree(launcher)


def latest_step(tmp_path) -> int:
    return int(tf.train.latest_checkpoint(tmp_path / "job" / CHECKPOINT_DIR).rsplit("-", 1)[1])


def test_a_launcher_killed_mid_run_leaves_no_process_of_its_job(start_paused, tmp_path):
    # As the OOM killer or a closed terminal would: its job stops as on SIGTERM, with a
    # checkpoint, and what is left after --grace_seconds is killed.
    log = tmp_path / "launcher.log"
    launcher, pause = start_paused("--grace_seconds=30", stdout=log.open("w"))
    pause.wait(launcher)
    job = psutil.Process(launcher.pid).children(recursive=True)
    assert sum("trainer.train" in " ".join(p.cmdline()) for p in job) == 2
    launcher.kill()
    launcher.wait()
    pause.release()
    deadline = time.monotonic() + 60
    while running(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(job), log.read_text()[-3000:]
    # The workers got the SIGTERM, not the SIGKILL: they saved the step they stopped at.
    assert latest_step(tmp_path) > 25
    assert not (tmp_path / "job" / RESULT_FILE).exists()


def test_a_job_process_killed_takes_its_workers_with_it(start_paused):
    # The chief is held and never let go: only the kernel's SIGKILL can end it.
    launcher, pause = start_paused()
    output = Output(launcher)
    pause.wait(launcher)
    [job] = psutil.Process(launcher.pid).children()
    workers = job.children()
    assert len(workers) == 2
    job.kill()
    assert launcher.wait(timeout=60) == 128 + signal.SIGKILL, output.tail()
    deadline = time.monotonic() + 60
    while running(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(workers)


CTRL_C_LINE = (
    "[launcher] Ctrl-C (SIGINT): every worker checkpoints at its next step boundary "
    "and exits 130; Ctrl-C again stops them at once\n"
)
# A terminal sends Ctrl-C's SIGINT to its foreground process group: the launcher's.
SEND_CTRL_C = {"to the launcher": os.kill, "to the launcher's process group": os.killpg}


@pytest.mark.parametrize("send", SEND_CTRL_C)
def test_ctrl_c_stops_every_worker_with_a_checkpoint_and_exits_130(send, start_paused, tmp_path):
    launcher, pause = start_paused("--max_restarts=2", start_new_session=True)
    output = Output(launcher)
    pause.wait(launcher)
    job = psutil.Process(launcher.pid).children(recursive=True)
    # The job in a process group of its own: each worker gets the launcher's SIGINT alone.
    assert os.getpgid(launcher.pid) not in {os.getpgid(p.pid) for p in job}
    SEND_CTRL_C[send](launcher.pid, signal.SIGINT)
    assert output.wait_for(r"\[launcher\] Ctrl-C"), output.tail()  # Passed on to every worker.
    pause.release()
    assert launcher.wait(timeout=120) == 128 + signal.SIGINT, output.tail()
    text = output.text()
    # One line of the launcher's, no traceback, no restart, nothing left running.
    assert [line for line in output.lines if not line.startswith("[worker ")] == [CTRL_C_LINE]
    assert not running(job)
    # One SIGINT each (a second would have stopped it at once, unsaved): every worker stopped at
    # the same step boundary, checkpointed.
    stopped = re.findall(r"\[worker (\d)\] .*Ctrl-C: stopped at step (\d+)", text)
    assert sorted(worker for worker, _ in stopped) == ["0", "1"], text[-3000:]
    assert len({step for _, step in stopped}) == 1
    assert latest_step(tmp_path) == int(stopped[0][1]) > 25


def test_a_second_ctrl_c_stops_every_worker_at_once(start_paused, tmp_path):
    launcher, pause = start_paused("--max_restarts=2")
    output = Output(launcher)
    pause.wait(launcher)
    job = psutil.Process(launcher.pid).children(recursive=True)
    launcher.send_signal(signal.SIGINT)
    assert output.wait_for(r"\[launcher\] Ctrl-C \(SIGINT\)"), output.tail()
    launcher.send_signal(signal.SIGINT)
    assert output.wait_for(r"\[launcher\] Ctrl-C again"), output.tail()
    pause.release()
    assert launcher.wait(timeout=60) == 128 + signal.SIGINT, output.tail()
    assert [line for line in output.lines if not line.startswith("[worker ")] == [
        CTRL_C_LINE,
        "[launcher] Ctrl-C again: every worker stops at once\n",
    ], output.tail()
    assert not running(job)
    assert latest_step(tmp_path) == 25  # Stopped at once: nothing saved after the pause.
