"""launch.slurm's batch scripts on a real one-node Slurm cluster (tests/slurm_cluster.py).

Each job runs 2 trainer tasks that find each other from Slurm's environment: one trains to
the end, one is sent SIGTERM mid-run and comes back requeued to resume, and one whose trainer
fails stays failed. Without Slurm installed (`make test` installs it) these fail, not skip.
"""

import dataclasses
import json
import pathlib
import re
import subprocess

import pytest

from tests.slurm_cluster import SlurmCluster
from tests.toolkit import Pause, command_line, environment, finish, start_module
from trainer.config import TrainConfig
from trainer.distribution import slurm as slurm_step
from trainer.distribution import strategies
from trainer.recipe import CHECKPOINT_DIR, EXPORT_DIR
from trainer.run.files import RESULT_FILE

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 200 steps of a small model on 2 workers, as in test_multi_worker.
CONFIG = TrainConfig(
    hidden_sizes=(64,),
    batch_size=500,
    epochs=2,
    warmup_epochs=0.0,
    steps_per_loop=25,
    data_source="bundled",
    run_name="job",
)
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
JOB_SECONDS = 240  # Generous: 2 cores shared with other tests and engineers.


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    # The jobs' trainers inherit the submitter's environment (sbatch --export=ALL).
    cluster.env.update(environment(SLURM_CONF=str(cluster.conf)))
    yield cluster
    cluster.stop()


@dataclasses.dataclass
class Job:
    id: str
    dir: pathlib.Path  # Its logdir is runs/ in here, its output job.out.
    pause: Pause | None = None  # What holds a worker of it at a known step.

    @property
    def output(self) -> str:
        return (self.dir / "job.out").read_text()

    @property
    def run_dir(self) -> pathlib.Path:
        return self.dir / "runs" / "job"


@pytest.fixture(scope="module")
def jobs(slurm, tmp_path_factory) -> dict[str, Job]:
    """The three jobs, submitted at once to share the wait: "trains", "preempted", "fails"."""

    def launch(name, submit=False, **config):
        """launch.slurm, started, for a job of 2 tasks training CONFIG with `config`: with
        `submit` its own --submit, else writing the script to job.sh in a new directory."""
        path = tmp_path_factory.mktemp(name)
        trainer = dataclasses.replace(CONFIG, logdir=str(path / "runs"), **config)
        return path, start_module(
            "launch.slurm",
            f"--output={path}/job.out",
            "--tasks_per_node=2",
            "--submit" if submit else f"--script={path}/job.sh",
            "--",
            *command_line(trainer),
            env=slurm.env,
        )

    started = {
        "trains": launch("trains", submit=True),
        # Long enough to be stopped mid-run: 400 steps, a checkpoint every 50.
        "preempted": launch("preempted", epochs=4, steps_per_loop=5, checkpoint_every_steps=50),
        "fails": launch("fails"),
    }
    submitted = {}
    for name, (path, process) in started.items():
        done = finish(process)
        assert done.returncode == 0, done.stderr[-2000:]
        if name == "trains":  # As a user sees it: the job id, printed by --submit.
            assert re.fullmatch(r"\d+\n", done.stdout), done.stdout
            submitted[name] = Job(done.stdout.strip(), path)
            continue
        if name == "fails":
            # Between writing and running the script its logdir became a file: the trainers
            # exit 1 at their start.
            (path / "runs").write_text("")
        # The preempted job's worker 1 holds still after saving ckpt-50, to be signalled there.
        pause = Pause(tmp_path_factory.mktemp("pause"), 50, task=1) if name == "preempted" else None
        env = {**slurm.env, **(pause.env() if pause else {})}
        job_id = subprocess.run(
            ["sbatch", "--parsable", str(path / "job.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        submitted[name] = Job(job_id, path, pause)
    return submitted


def test_sigterm_mid_run_requeues_the_job_and_it_resumes(slurm, jobs):
    job = jobs["preempted"]
    job.pause.wait(timeout=JOB_SECONDS)
    # What Slurm does --signal_seconds before the time limit: SIGTERM to the job's steps.
    slurm.run("scancel", "--signal=TERM", job.id)
    job.pause.release_once_signalled()

    state = slurm.wait_for_job(job.id, ENDED, JOB_SECONDS)
    output = job.output
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("COMPLETED", "0:0", "1"), (
        output
    )
    first, second = output.split(f"launch.slurm: job {job.id} attempt 2 on ")
    stopped = re.findall(r"SIGTERM: stopped at step (\d+)", first)
    assert len(stopped) == 2 and stopped[0] == stopped[1], first  # Both workers, one step.
    step = int(stopped[0])
    assert step >= 50
    assert f"launch.slurm: preempted (exit code 143); requeueing job {job.id}" in first
    assert len(re.findall(rf"resumed from \S+/ckpt-{step} at step {step}", second)) == 2, second
    assert json.loads((job.run_dir / RESULT_FILE).read_text())["steps"] == 400
    assert (job.run_dir / EXPORT_DIR / "400" / "saved_model.pb").exists()


def test_a_job_of_two_tasks_trains_checkpoints_and_exports(slurm, jobs):
    job = jobs["trains"]
    state = slurm.wait_for_job(job.id, ENDED, JOB_SECONDS)
    output = job.output
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("COMPLETED", "0:0", "0"), (
        output
    )
    assert json.loads((job.run_dir / RESULT_FILE).read_text())["steps"] == 200
    assert (job.run_dir / EXPORT_DIR / "200" / "saved_model.pb").exists()
    assert {p.name for p in (job.run_dir / CHECKPOINT_DIR).glob("ckpt-*.index")} == {
        "ckpt-100.index",
        "ckpt-200.index",
    }
    # Two workers from Slurm's tasks, rank 0 the chief, ending with the same weights.
    assert "CollectiveAllReduceStrategy with 2 replica(s): " in output
    assert "CollectiveAllReduceStrategy with 2 replica(s) (worker 1): " in output
    fingerprints = re.findall(r"weights fingerprint at step 200: (\w+)", output)
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1], output


def test_a_trainer_that_fails_leaves_the_job_failed_not_requeued(slurm, jobs):
    job = jobs["fails"]
    state = slurm.wait_for_job(job.id, ENDED, JOB_SECONDS)
    output = job.output
    assert (state["JobState"], state["ExitCode"], state["Restarts"]) == ("FAILED", "1:0", "0"), (
        output
    )
    assert re.search(r"srun: error: \S+: tasks? [\d,-]+: Exited with exit code 1", output)
    # The job script decides on requeueing before the job ends (launch/slurm_lib.py), so an
    # ended FAILED job with no "requeueing" line stays failed: no wait can show more.
    assert "requeueing" not in output


def test_every_task_derives_the_same_cluster_in_slurms_node_order(slurm):
    # 2 nodes of 2 tasks; node9 comes before node10 as Slurm orders them, not as strings sort.
    step = {
        **slurm.env,
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_NODELIST": "node[9-10]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
    }
    base = slurm_step.port_base(77)
    want = [f"node9:{base}", f"node9:{base + 1}", f"node10:{base}", f"node10:{base + 1}"]
    for rank, (node, local) in enumerate(
        [("node9", 0), ("node9", 1), ("node10", 0), ("node10", 1)]
    ):
        resolver = slurm_step.job_step_cluster(
            {
                **step,
                "SLURM_PROCID": str(rank),
                "SLURM_LOCALID": str(local),
                "SLURMD_NODENAME": node,
            }
        )
        assert resolver.cluster_spec().as_dict() == {"worker": want}
        assert (resolver.task_type, resolver.task_id) == ("worker", rank)
        assert resolver.num_accelerators() == {"GPU": 0}
    # A cyclic distribution puts rank 1 on node10: refused rather than a hang.
    with pytest.raises(strategies.StrategyError, match="srun --distribution=block"):
        slurm_step.job_step_cluster(
            {**step, "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURMD_NODENAME": "node10"}
        )
    # Jobs next to each other on a node listen on different ports.
    assert slurm_step.port_base(78) - base == slurm_step.PORTS_PER_BLOCK


def test_a_nodes_gpus_are_shared_out_among_its_tasks(slurm):
    step = {
        **slurm.env,
        "SLURM_JOB_ID": "5",
        "SLURM_STEP_NODELIST": "gpu1",
        "SLURM_STEP_TASKS_PER_NODE": "2",
        "SLURMD_NODENAME": "gpu1",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "1",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",
    }
    resolver = slurm_step.job_step_cluster(step)
    assert resolver.num_accelerators() == {"GPU": 2}
    assert step["CUDA_VISIBLE_DEVICES"] == "2,3"
