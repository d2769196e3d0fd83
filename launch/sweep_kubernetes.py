"""A sweep as one Kubernetes Indexed Job: a pod a run, `--parallel` at once, for `kubectl apply`.

The plan (every run's name and flags) is a ConfigMap beside the Job, mounted in every pod;
pod i runs `python -m launch.sweep_task`, which picks run i from it by JOB_COMPLETION_INDEX and
becomes its trainer (launch/sweep_task.py), writing into the sweep's directory on the claim,
where --status reads it as on any shared filesystem. With backoffLimitPerIndex a run that fails
fails its index alone and the others go on; a trainer that exits 1 (bad flags, divergence)
fails its index at once; a pod disrupted (evicted, preempted) or whose trainer checkpointed on
SIGTERM (143) is replaced without counting, and resumes. Each run is one pod, which serves no
port: its NetworkPolicy admits no pod. Pods run as the image's user, as launch.kubernetes's
do, and TensorBoard reads the claim beside them, as there.
"""

import json
import os

from launch.kubernetes_lib import (
    BACKOFF_LIMIT,
    LOGDIR,
    TrainingJob,
    _labels,
    _metadata,
    _network_policy,
    _pod_spec,
    _shared_volume,
    _tensorboard,
    pod_failure_policy,
)
from launch.sweep_plan import PLAN_FILE, Sweep

# Where each pod finds the ConfigMap's plan.
PLAN_MOUNT = "/etc/mlp-sweep"


def sweep_dir_on_claim(sweep_dir: str) -> str:
    """Where the pods see the sweep: `sweep_dir` is relative to the claim's root."""
    return os.path.join(LOGDIR, sweep_dir)


def sweep_manifests(sweep: Sweep, job: TrainingJob, parallel: int) -> list[dict]:
    """The pods' NetworkPolicy, the plan's ConfigMap, the Indexed Job, then (with
    job.tensorboard) TensorBoard's NetworkPolicy, Deployment and Service."""
    job.validate()
    plan_map = f"{job.name}-plan"
    volume, mount = _shared_volume(job, read_only=False)
    container = {
        "name": "trainer",
        "image": job.image,
        "command": ["python", "-m", "launch.sweep_task"],
        "env": [
            {"name": "SWEEP_PLAN", "value": f"{PLAN_MOUNT}/{PLAN_FILE}"},
            {"name": "SWEEP_DIR", "value": sweep.sweep_dir},
        ],
        "volumeMounts": [mount, {"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True}],
    }
    if job.gpus_per_worker:
        container["resources"] = {"limits": {"nvidia.com/gpu": job.gpus_per_worker}}
    pod_spec = _pod_spec(container, volume)
    pod_spec["volumes"].append({"name": "plan", "configMap": {"name": plan_map}})
    pod_spec["restartPolicy"] = "Never"  # What podFailurePolicy requires.

    indexed_job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, job.name),
        "spec": {
            "completionMode": "Indexed",
            "completions": len(sweep.runs),
            "parallelism": parallel,
            # Retries count per run: one run's failures do not stop the others.
            "backoffLimitPerIndex": BACKOFF_LIMIT,
            # A replacement starts once the pod it replaces has stopped: one trainer a run.
            "podReplacementPolicy": "Failed",
            # Exit 1 fails that run's index alone; preempted or disrupted, it is replaced.
            "podFailurePolicy": pod_failure_policy("FailIndex"),
            "template": {"metadata": {"labels": _labels(job.name)}, "spec": pod_spec},
        },
    }
    plan = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, plan_map),
        "data": {PLAN_FILE: json.dumps(sweep.plan(), indent=2)},
    }
    documents = [_network_policy(job, job.name, []), plan, indexed_job]
    return documents + (_tensorboard(job) if job.tensorboard else [])
