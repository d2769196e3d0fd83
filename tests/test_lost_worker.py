"""A worker of a multi-worker job dies without warning (SIGKILL: out of memory, node lost): the
others stop as preempted workers do, exit 143, so a scheduler restarts the whole job from its
checkpoints rather than failing it (exit 1 fails a Kubernetes job: launch/kubernetes_lib.py)."""

import json
import signal
import time

from launch.ports import free_ports
from tests.toolkit import command_line, environment, start_module
from trainer.config import TrainConfig
from trainer.preemption import PREEMPTED_EXIT_CODE

# Long enough to be still training when worker 1 is killed after the first checkpoint.
CONFIG = TrainConfig(hidden_sizes=(32,), batch_size=100, epochs=50, warmup_epochs=0.0,
                     steps_per_loop=5, checkpoint_every_steps=50, data_source="bundled")


def test_the_chief_exits_143_when_a_worker_is_killed(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    workers = []
    for index, log in enumerate(logs):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        with open(log, "w") as out:
            workers.append(start_module(
                "trainer.train", "--strategy=multi_worker", f"--logdir={tmp_path}",
                *command_line(CONFIG), env=environment(TF_CONFIG=tf_config),
                stdout=out, stderr=out))
    chief, worker = workers
    try:
        deadline = time.monotonic() + 180
        while "ckpt-50" not in logs[0].read_text():
            assert time.monotonic() < deadline and chief.poll() is None, logs[0].read_text()
            time.sleep(0.2)
        worker.send_signal(signal.SIGKILL)
        assert chief.wait(timeout=120) == PREEMPTED_EXIT_CODE, logs[0].read_text()[-3000:]
    finally:
        for process in workers:
            process.kill()
            process.wait()
    assert "a worker of the job was lost; stopping:" in logs[0].read_text()

