"""What one process of a job knows about the others: who is chief, who it is, what they hold."""

import tensorflow as tf


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes summaries, checkpoints and exports for the job."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().jobs:
        return True
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().jobs
    )


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line for the log: the strategy, its replicas, this worker and its devices."""
    worker = "" if is_chief(strategy) else f" (worker {worker_id(strategy)})"
    return (
        f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)"
        f"{worker}: {', '.join(strategy.extended.worker_devices)}"
    )


def worker_id(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver.task_id if resolver is not None and resolver.task_id is not None else 0


def task_name(strategy: tf.distribute.Strategy) -> str:
    """How messages name this process: "chief" (a TF_CONFIG chief task) or "worker N"."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and resolver.task_type == "chief":
        return "chief"
    return f"worker {worker_id(strategy)}"


def gather_from_workers(
    strategy: tf.distribute.Strategy, values: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """{task name: its `values`} of every process of the job, on every process.

    A collective: every worker calls it at the same point of the run. It lets the workers
    agree on what each decides alone (which checkpoint to restore, what data they hold).
    """
    task = (0, worker_id(strategy)) if task_name(strategy) == "chief" else (1, worker_id(strategy))
    mine = tf.constant([[*task, *values]], tf.int64)
    per_replica = strategy.experimental_distribute_values_from_function(lambda _: mine)
    rows = strategy.gather(per_replica, axis=0).numpy().tolist()  # One row per replica.
    return {
        ("chief" if kind == 0 else f"worker {index}"): tuple(rest) for kind, index, *rest in rows
    }


def chief_value(strategy: tf.distribute.Strategy, value: int) -> int:
    """The chief's `value`, on every worker (a collective, as gather_from_workers)."""
    gathered = gather_from_workers(strategy, (int(is_chief(strategy)), value))
    return next(v for chief, v in gathered.values() if chief)
