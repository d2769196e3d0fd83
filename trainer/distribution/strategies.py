"""The one place that turns a strategy name into a `tf.distribute` strategy.

`auto` is MirroredStrategy over every visible GPU, or over `cpu_replicas` logical CPU devices
when asked for more than one, else a single device. A machine without GPUs runs the very same
MirroredStrategy code path on logical CPU devices, which is how the tests exercise it.

`multi_worker` is MultiWorkerMirroredStrategy across the machines `TF_CONFIG` names, each
using its local GPUs (or its CPU); launch/ starts such jobs locally or on Kubernetes. Without
TF_CONFIG, in a Slurm job step (srun), the step's tasks are the workers (see slurm.py).
"""

import functools
import json
import os

import tensorflow as tf

from trainer.choices import STRATEGIES
from trainer.distribution import StrategyError
from trainer.distribution.slurm import in_job_step, job_step_cluster


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
                cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices
            )
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have < num_devices:
                raise StrategyError(
                    f"--cpu_replicas={num_devices}: TensorFlow already started with {have} "
                    "CPU device(s); set it before any TensorFlow work"
                ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")][:num_devices]


def create_strategy(name: str = "auto", cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """Returns the strategy `name` names, on GPUs when there are any."""
    if name not in STRATEGIES:
        raise StrategyError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if cpu_replicas < 1:
        raise StrategyError(f"--cpu_replicas must be at least 1, got {cpu_replicas}")
    if name == "multi_worker":  # One replica a worker on CPUs (TrainConfig checks cpu_replicas).
        if not os.environ.get("TF_CONFIG") and in_job_step():
            return _slurm_strategy()
        read_tf_config()
        return _strategy_on(tf.distribute.MultiWorkerMirroredStrategy, None)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus and cpu_replicas > 1:
        raise StrategyError(
            f"--cpu_replicas={cpu_replicas} is for machines without GPUs; "
            f"this one has {len(gpus)} GPU(s), which are used instead"
        )
    # GPUs if there are any, else the CPU split into the replicas asked for.
    devices = (
        [d.name for d in tf.config.list_logical_devices("GPU")] if gpus else split_cpu(cpu_replicas)
    )
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
        raise StrategyError(
            "TF_CONFIG is not set, nor is this a Slurm job step; "
            "--strategy=multi_worker needs one of them to find the other "
            "workers (see docs/clusters.md)"
        )
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        members = cluster[task["type"]]
        valid = (
            isinstance(members, list)
            and 0 <= int(task["index"]) < len(members)
            and set(cluster) <= {"chief", "worker", "evaluator", "ps"}
        )
    except (ValueError, KeyError, TypeError) as e:
        raise StrategyError(
            f"TF_CONFIG is malformed ({type(e).__name__}: {e}); expected "
            '{"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": 0}}'
        ) from None
    if not valid:
        raise StrategyError(f"TF_CONFIG: task {task} is not in its cluster {cluster}")
    return tf_config


@functools.cache
def _slurm_strategy():
    # Once per process, as _strategy_on, and for the same reason.
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=job_step_cluster())
