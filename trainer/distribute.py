"""The one place that turns a strategy name into a `tf.distribute` strategy.

`auto` is MirroredStrategy over every visible GPU, or over `cpu_replicas` logical CPU devices
when asked for more than one, else a single device. A machine without GPUs runs the very same
MirroredStrategy code path on logical CPU devices, which is how the tests exercise it.

`multi_worker` is MultiWorkerMirroredStrategy across the machines `TF_CONFIG` names, each
using its local GPUs (or its CPU); launch/ starts such jobs locally or on Kubernetes. Without
TF_CONFIG, in a Slurm job step (srun), the step's tasks are the workers (see slurm_cluster).
"""

import functools
import json
import os
import re
import subprocess

import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker")


class StrategyError(ValueError):
    """A strategy setting that cannot work on this machine; the message names the flag."""


def split_cpu(num_devices: int) -> list[str]:
    """Splits the physical CPU into `num_devices` logical devices and returns their names.

    Must run before TensorFlow initializes its devices; asking again for the same split is a
    no-op, asking for another one afterwards is an error.
    """
    if num_devices < 1:
        raise StrategyError(f"--cpu_replicas must be at least 1, got {num_devices}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != num_devices:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have < num_devices:
                raise StrategyError(
                    f"--cpu_replicas={num_devices}: TensorFlow already started with {have} "
                    "CPU device(s); set it before any TensorFlow work") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")][:num_devices]


def create_strategy(name: str = "auto", cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """Returns the strategy `name` names, on GPUs when there are any."""
    if name not in STRATEGIES:
        raise StrategyError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if cpu_replicas < 1:
        raise StrategyError(f"--cpu_replicas must be at least 1, got {cpu_replicas}")
    if name == "multi_worker":  # One replica a worker on CPUs (TrainConfig checks cpu_replicas).
        if not os.environ.get("TF_CONFIG") and in_slurm_step():
            return _slurm_strategy()
        read_tf_config()
        return _strategy_on(tf.distribute.MultiWorkerMirroredStrategy, None)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and cpu_replicas > 1:
        raise StrategyError(f"--cpu_replicas={cpu_replicas} is for machines without GPUs; "
                            f"this one has {len(gpus)} GPU(s), which are used instead")
    # GPUs if there are any, else the CPU split into the replicas asked for.
    devices = ([d.name for d in tf.config.list_logical_devices("GPU")] if gpus
               else split_cpu(cpu_replicas))
    if name == "one_device" or (name == "auto" and len(devices) == 1):
        return _strategy_on(tf.distribute.OneDeviceStrategy, devices[0])
    return _strategy_on(tf.distribute.MirroredStrategy, tuple(devices))


@functools.cache
def _strategy_on(kind, devices):
    # One strategy per device set and process: two MirroredStrategy objects number their
    # collective ops alike, so a second run in the same process (a test, a notebook) would
    # abort with "Shape mismatch in the collective instance 100" (tensorflow#62790).
    return kind() if devices is None else kind(devices)


def read_tf_config() -> dict:
    """TF_CONFIG, checked: a cluster of workers (and maybe a chief) and this task in it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError("TF_CONFIG is not set, nor is this a Slurm job step; "
                            "--strategy=multi_worker needs one of them to find the other "
                            "workers (see README, 'Several machines' and 'Slurm')")
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        members = cluster[task["type"]]
        valid = (isinstance(members, list) and 0 <= int(task["index"]) < len(members)
                 and set(cluster) <= {"chief", "worker", "evaluator", "ps"})
    except (ValueError, KeyError, TypeError) as e:
        raise StrategyError(f"TF_CONFIG is malformed ({type(e).__name__}: {e}); expected "
                            '{"cluster": {"worker": ["host:port", ...]}, '
                            '"task": {"type": "worker", "index": 0}}') from None
    if not valid:
        raise StrategyError(f"TF_CONFIG: task {task} is not in its cluster {cluster}")
    return tf_config


# What srun tells each task of a job step, all that slurm_cluster needs.
SLURM_STEP_VARIABLES = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURMD_NODENAME",
                        "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
# Each job's workers listen on a block of ports picked by its job id, so that two jobs sharing
# a node do not collide (unless their ids differ by a multiple of SLURM_PORT_BLOCKS); the
# tasks on a node take consecutive ports of it. Below Linux's ephemeral ports (32768-60999),
# where the ports of outgoing connections come from.
SLURM_FIRST_PORT = 15000
SLURM_PORTS_PER_BLOCK = 64
SLURM_PORT_BLOCKS = 256


def in_slurm_step(environ=os.environ) -> bool:
    """Whether this process is a task that srun started."""
    return all(name in environ for name in SLURM_STEP_VARIABLES)


def slurm_port_base(job_id: int) -> int:
    """The port of the first task on each node of Slurm job `job_id`."""
    return SLURM_FIRST_PORT + (job_id % SLURM_PORT_BLOCKS) * SLURM_PORTS_PER_BLOCK


def slurm_cluster(environ=os.environ) -> tf.distribute.cluster_resolver.SimpleClusterResolver:
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
    nodes = subprocess.run(["scontrol", "show", "hostnames", environ["SLURM_STEP_NODELIST"]],
                           capture_output=True, text=True, check=True,
                           env=dict(environ)).stdout.split()
    tasks = _expand_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])
    if len(tasks) != len(nodes):
        raise StrategyError(f"SLURM_STEP_TASKS_PER_NODE={environ['SLURM_STEP_TASKS_PER_NODE']} "
                            f"does not match SLURM_STEP_NODELIST={environ['SLURM_STEP_NODELIST']}")
    if max(tasks) > SLURM_PORTS_PER_BLOCK:
        raise StrategyError(f"{max(tasks)} tasks on one node: at most {SLURM_PORTS_PER_BLOCK} "
                            "trainers per node have ports of their own")
    base = slurm_port_base(int(environ["SLURM_JOB_ID"]))
    workers = [f"{node}:{base + index}" for node, count in zip(nodes, tasks)
               for index in range(count)]
    node = environ["SLURMD_NODENAME"]
    if workers[rank] != f"{node}:{base + local}":
        raise StrategyError(f"task {rank} runs on {node} as its task {local}, not where a "
                            f"block distribution puts it ({workers[rank]}); start the "
                            "trainers with srun --distribution=block")
    gpus = _share_gpus(local, tasks[nodes.index(node)], environ)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": workers}), task_type="worker", task_id=rank,
        num_accelerators={"GPU": gpus}, rpc_layer="grpc")


@functools.cache
def _slurm_strategy():
    # Once per process, as _strategy_on, and for the same reason.
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=slurm_cluster())


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
        raise StrategyError(f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']}: "
                            f"{len(visible)} GPU(s) do not divide among the node's "
                            f"{tasks_on_node} tasks")
    if share:
        environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible[local * share:(local + 1) * share])
    return share


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes summaries, checkpoints and exports for the job."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().jobs:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().jobs)


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line for the log: the strategy, its replicas, this worker and its devices."""
    worker = "" if is_chief(strategy) else f" (worker {worker_id(strategy)})"
    return (f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"
            f"{worker}: {', '.join(strategy.extended.worker_devices)}")


def worker_id(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver.task_id if resolver is not None and resolver.task_id is not None else 0


def task_name(strategy: tf.distribute.Strategy) -> str:
    """How messages name this process: "chief" (a TF_CONFIG chief task) or "worker N"."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type == "chief":
        return "chief"
    return f"worker {worker_id(strategy)}"


def gather_from_workers(strategy: tf.distribute.Strategy,
                        values: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """{task name: its `values`} of every process of the job, on every process.

    A collective: every worker calls it at the same point of the run. It lets the workers
    agree on what each decides alone (which checkpoint to restore, what data they hold).
    """
    task = (0, worker_id(strategy)) if task_name(strategy) == "chief" else (1, worker_id(strategy))
    mine = tf.constant([[*task, *values]], tf.int64)
    per_replica = strategy.experimental_distribute_values_from_function(lambda _: mine)
    rows = strategy.gather(per_replica, axis=0).numpy().tolist()  # One row per replica.
    return {("chief" if kind == 0 else f"worker {index}"): tuple(rest)
            for kind, index, *rest in rows}


def chief_value(strategy: tf.distribute.Strategy, value: int) -> int:
    """The chief's `value`, on every worker (a collective, as gather_from_workers)."""
    gathered = gather_from_workers(strategy, (int(is_chief(strategy)), value))
    return next(v for chief, v in gathered.values() if chief)
