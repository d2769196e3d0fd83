"""launch.local refuses bad trainer flags before any worker starts; free ports for servers."""

import socket

import pytest

from launch import local
from launch.ports import free_ports
from launch.trainer_args import LaunchError, check_trainer_args
from tests.toolkit import environment, finish, start_module
from trainer import terminal

BAD_TRAINER_ARGS = [
    (["--epoch=2"], "trainer argument --epoch=2: --epoch is not a trainer flag"),
    (["--epochs=1", "--strategy=mirrored"],
     "trainer argument --strategy=mirrored: --strategy is set by launch.local "
     "(--strategy=multi_worker)"),
    (["epochs=2"], "trainer argument 'epochs=2': expected --<trainer flag>=<value> after --"),
]


@pytest.mark.parametrize("trainer_args, message", BAD_TRAINER_ARGS)
def test_run_job_refuses_a_bad_trainer_flag_before_starting_a_worker(trainer_args, message,
                                                                     monkeypatch):
    started = []
    monkeypatch.setattr(local.subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(LaunchError) as error:
        local.run_job(2, trainer_args)
    assert str(error.value).startswith(message)
    assert started == []


def test_the_command_line_refuses_each_bad_trainer_flag_with_one_line():
    # TF_CPP_MIN_LOG_LEVEL unset, as in a user's shell: the launcher loads TensorFlow too.
    env = {k: v for k, v in environment().items() if k != terminal.CPP_LEVEL}
    started = [start_module("launch.local", "--workers=2", "--", *trainer_args, env=env)
               for trainer_args, _ in BAD_TRAINER_ARGS]
    for process, (_, message) in zip(started, BAD_TRAINER_ARGS):
        done = finish(process)
        assert done.returncode == 1
        assert done.stdout == ""  # No "[worker i]" line: no worker started.
        assert done.stderr.splitlines() == [done.stderr.strip()]
        assert done.stderr.startswith(f"launch.local: error: {message}")


def test_verbosity_passes_through_to_the_workers():
    # It changes what a worker's terminal shows, never what the run computes.
    assert check_trainer_args(["--verbosity=1", "--epochs=1"], local.SET_BY_LOCAL) == [
        "--verbosity=1", "--epochs=1"]


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
