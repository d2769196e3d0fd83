"""A Slurm job step's tasks as the workers of a multi-worker job, read from srun's environment."""

import os
import re
import subprocess

import tensorflow as tf

from trainer.distribution import StrategyError

# What srun tells each task of a job step, all that job_step_cluster needs.
JOB_STEP_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURMD_NODENAME",
    "SLURM_STEP_NODELIST",
    "SLURM_STEP_TASKS_PER_NODE",
)
# Each job's workers listen on a block of ports picked by its job id, so that two jobs sharing
# a node do not collide (unless their ids differ by a multiple of PORT_BLOCKS); the
# tasks on a node take consecutive ports of it. Below Linux's ephemeral ports (32768-60999),
# where the ports of outgoing connections come from.
FIRST_PORT = 15000
PORTS_PER_BLOCK = 64
PORT_BLOCKS = 256


def in_job_step(environ=os.environ) -> bool:
    """Whether this process is a task that srun started."""
    return all(name in environ for name in JOB_STEP_VARIABLES)


def port_base(job_id: int) -> int:
    """The port of the first task on each node of Slurm job `job_id`."""
    return FIRST_PORT + (job_id % PORT_BLOCKS) * PORTS_PER_BLOCK


def job_step_cluster(environ=os.environ) -> tf.distribute.cluster_resolver.SimpleClusterResolver:
    """The job step's tasks as workers, task (rank) 0 the chief, from what srun told this task.

    Ranks fill the step's nodes in node-list order (srun --distribution=block, which the batch
    script of launch.slurm asks for), so every task derives the same cluster on its own: rank
    r listens on <its node's name>:<port base + its index on the node>. A node's GPUs that
    srun made visible are shared out equally among its tasks, in order of their index, as
    TensorFlow's SlurmClusterResolver does; this runs before TensorFlow looks at the GPUs.

    Not SlurmClusterResolver itself: it orders nodes by sorting their names as strings (node10
    before node9) where Slurm numbers ranks in node-list order, so ranks and addresses disagree
    beyond nine nodes; and without GPUs it runs nvidia-smi, then fails on zero GPUs per task.
    """
    rank, local = int(environ["SLURM_PROCID"]), int(environ["SLURM_LOCALID"])
    # scontrol expands Slurm's compressed node lists ("gpu[01-04,07]") as Slurm does.
    nodes = subprocess.run(
        ["scontrol", "show", "hostnames", environ["SLURM_STEP_NODELIST"]],
        capture_output=True,
        text=True,
        check=True,
        env=dict(environ),
    ).stdout.split()
    tasks = _expand_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])
    if len(tasks) != len(nodes):
        raise StrategyError(
            f"SLURM_STEP_TASKS_PER_NODE={environ['SLURM_STEP_TASKS_PER_NODE']} "
            f"does not match SLURM_STEP_NODELIST={environ['SLURM_STEP_NODELIST']}"
        )
    if max(tasks) > PORTS_PER_BLOCK:
        raise StrategyError(
            f"{max(tasks)} tasks on one node: at most {PORTS_PER_BLOCK} "
            "trainers per node have ports of their own"
        )
    base = port_base(int(environ["SLURM_JOB_ID"]))
    workers = [
        f"{node}:{base + index}" for node, count in zip(nodes, tasks) for index in range(count)
    ]
    node = environ["SLURMD_NODENAME"]
    if workers[rank] != f"{node}:{base + local}":
        raise StrategyError(
            f"task {rank} runs on {node} as its task {local}, not where a "
            f"block distribution puts it ({workers[rank]}); start the "
            "trainers with srun --distribution=block"
        )
    gpus = _share_gpus(local, tasks[nodes.index(node)], environ)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": workers}),
        task_type="worker",
        task_id=rank,
        num_accelerators={"GPU": gpus},
        rpc_layer="grpc",
    )


def _expand_tasks_per_node(spec: str) -> list[int]:
    """Slurm's tasks per node, "2(x3),1", as one count per node: [2, 2, 2, 1]."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not match:
            raise StrategyError(f"SLURM_STEP_TASKS_PER_NODE={spec}: not Slurm's format")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _share_gpus(local: int, tasks_on_node: int, environ) -> int:
    """This task's equal share of the GPUs srun made visible on its node (0 without GPUs);
    narrows CUDA_VISIBLE_DEVICES to them."""
    visible = [gpu for gpu in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu]
    share = len(visible) // tasks_on_node
    if len(visible) != share * tasks_on_node:
        raise StrategyError(
            f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']}: "
            f"{len(visible)} GPU(s) do not divide among the node's "
            f"{tasks_on_node} tasks"
        )
    if share:
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible[local * share : (local + 1) * share])
    return share
