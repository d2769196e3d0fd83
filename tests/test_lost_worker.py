"""A worker of a multi-worker job dies without warning (SIGKILL: out of memory, node lost) and a
scheduler starts its replacement at once, as Kubernetes' Job controller does: the others stop
as preempted workers do and exit 143 (exit 1 would fail a Kubernetes job:
launch/kubernetes_lib.py), and once they are restarted too, the job resumes from its
checkpoint and finishes."""

import json
import re
import signal

import pytest

from launch.ports import free_ports
from tests.toolkit import Pause, command_line, environment, start_module
from trainer.common.exit_codes import PREEMPTED_EXIT_CODE
from trainer.config import TrainConfig
from trainer.run.files import RESULT_FILE

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 500 steps, a checkpoint every 50: worker 1 is killed after the first.
CONFIG = TrainConfig(
    run_name="job",
    hidden_sizes=(32,),
    batch_size=100,
    epochs=1,
    warmup_epochs=0.0,
    steps_per_loop=5,
    checkpoint_every_steps=50,
    data_source="bundled",
)


def test_a_killed_worker_restarts_the_job_from_its_checkpoint(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    started = []

    pause = Pause(tmp_path / "pause", 50, task=1)  # Worker 1, held after saving ckpt-50.

    def start(index: int, env=None):
        """Worker `index` of the cluster, its output in a log file of its own."""
        log = tmp_path / f"worker{index}.{len(started)}.log"
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        with open(log, "w") as out:
            process = start_module(
                "trainer.train",
                "--strategy=multi_worker",
                f"--logdir={tmp_path}",
                *command_line(CONFIG),
                env={**environment(TF_CONFIG=tf_config), **(env or {})},
                stdout=out,
                stderr=out,
            )
        started.append(process)
        return process, log

    try:
        (chief, chief_log), (worker, _) = start(0), start(1, pause.env())
        pause.wait(worker)  # Mid-run on any machine: the chief cannot go on without it.
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        new_worker, new_worker_log = start(1)
        # Its heartbeats stop, or the replacement connects as a new process: either way the
        # chief's collectives fail and it stops as if preempted.
        assert chief.wait(timeout=120) == PREEMPTED_EXIT_CODE, chief_log.read_text()[-3000:]
        assert "a worker of the job was lost; stopping:" in chief_log.read_text()

        new_chief, new_chief_log = start(0)
        for process, log in [(new_chief, new_chief_log), (new_worker, new_worker_log)]:
            assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
            assert re.search(r"resumed from \S+ckpt-(\d+) at step \1", log.read_text())
    finally:
        for process in started:
            process.kill()
            process.wait()
    assert json.loads((tmp_path / "job" / RESULT_FILE).read_text())["steps"] == 500
