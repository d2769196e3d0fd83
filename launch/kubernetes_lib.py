"""Kubernetes manifests for one multi-worker run, by one of two engines, and TensorBoard beside it.

`tfjob`: a Kubeflow TFJob. The training operator starts its pods and sets each one's TF_CONFIG,
which is all `--strategy=multi_worker` needs. The chief is one of the N training processes (it
computes like the others, and also writes the run's files); the other N-1 are workers.
`restartPolicy: ExitCode` restarts a pod whose trainer exited 128 or more and leaves one that
exited 1 (bad flags, divergence) failed instead of restarting it forever.

`indexed-job`: the same run on any Kubernetes, without an operator: an Indexed batch/v1 Job of
N pods and a headless Service that gives pod i the DNS name `<job>-<i>.<service>`. Each pod
builds its TF_CONFIG from its completion index (worker 0 is the chief). Its podFailurePolicy
fails the job when a trainer exits 1, and does not count against backoffLimit a pod that was
disrupted (evicted, preempted, its node drained) or whose trainer exited 143.

Either way every pod mounts the same PersistentVolumeClaim at the logdir, so whichever pod
restarts finds the run's checkpoints there, and a NetworkPolicy lets only the job's own pods
reach the trainers' gRPC port: a TensorFlow server runs any op it is sent, unauthenticated.

Exit 143 is a trainer preempted by SIGTERM (all workers checkpoint the same step) or one whose
peer died (killed, out of memory, node lost: trainer/train.py), so when one pod goes, the
others follow and are restarted too; all resume from the latest checkpoint together.
"""

import dataclasses
import json
import re

import yaml

from launch.trainer_args import MULTI_WORKER_FLAG, LaunchError, check_trainer_args
from trainer.common.exit_codes import PREEMPTED_EXIT_CODE

LOGDIR = "/mnt/runs"  # Where the shared volume is mounted in every pod.
TENSORBOARD_PORT = 6006
GRPC_PORT = 2222  # The trainers' TensorFlow servers: the training operator's default port.
# The Dockerfile's user (and group): every pod runs as it, and the claim is made writable to its
# group (fsGroup), as a volume owned by root would not be to a user that is not root.
IMAGE_USER_ID = 1000
ENGINES = ("tfjob", "indexed-job")
# The oldest Kubernetes the manifests are for: podFailurePolicy is GA there. The tests validate
# them against its API schemas.
KUBERNETES_VERSION = "1.31"
# Pod failures the indexed job retries (a crash, an exit other than 1 and 143) before it fails.
BACKOFF_LIMIT = 3
# Trainer flags the manifests set for every pod, and what the user sets instead.
SET_BY_MANIFESTS = {
    "strategy": "the manifests (--strategy=multi_worker)",
    "logdir": f"the manifests (the shared volume at {LOGDIR})",
    "run_name": "--name (the run is named after the job)",
}
# A DNS label: what Kubernetes accepts as the name of a job, a claim or a namespace. Job names
# are kept shorter so the pod names built from them ("<name>-worker-12") fit too.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_MAX_NAME = 40


@dataclasses.dataclass(frozen=True)
class TrainingJob:
    image: str  # Holds this repository as its working directory, with its requirements.
    claim: str  # PersistentVolumeClaim (ReadWriteMany when pods may land on several nodes).
    name: str = "mlp-train"
    workers: int = 2  # Training processes, the chief included.
    gpus_per_worker: int = 0
    namespace: str = ""  # Empty: kubectl's current namespace.
    tensorboard: bool = True
    trainer_args: tuple[str, ...] = ()
    engine: str = "tfjob"  # Or indexed-job: see the module's docstring.

    def validate(self) -> "TrainingJob":
        """Raises LaunchError naming the first bad flag; returns self for chaining."""

        def need(ok, flag, problem):
            if not ok:
                raise LaunchError(f"--{flag}={getattr(self, flag)}: {problem}")

        need(self.engine in ENGINES, "engine", f"must be one of {', '.join(ENGINES)}")
        need(self.image.strip(), "image", "required: the container image holding this repository")
        need(
            re.fullmatch(_DNS_LABEL, self.name) and len(self.name) <= _MAX_NAME,
            "name",
            f"must be lowercase letters, digits and -, at most {_MAX_NAME} characters",
        )
        need(self.workers >= 1, "workers", "must be at least 1 (the chief)")
        need(self.gpus_per_worker >= 0, "gpus_per_worker", "must be 0 (CPU only) or more")
        need(
            re.fullmatch(_DNS_LABEL, self.claim),
            "claim",
            "required: the name of a PersistentVolumeClaim (lowercase letters, digits and -)",
        )
        need(
            not self.namespace or re.fullmatch(_DNS_LABEL, self.namespace),
            "namespace",
            "must be lowercase letters, digits and -",
        )
        check_trainer_args(
            list(self.trainer_args),
            SET_BY_MANIFESTS,
            replicas=self.replicas,
            launcher_args=(MULTI_WORKER_FLAG,),
        )
        return self

    @property
    def replicas(self) -> int:
        """Replicas in sync: one per GPU, or one per CPU-only pod."""
        return self.workers * max(1, self.gpus_per_worker)

    def trainer_command(self) -> list[str]:
        return [
            "python",
            "-m",
            "trainer.train",
            MULTI_WORKER_FLAG,
            f"--logdir={LOGDIR}",
            f"--run_name={self.name}",
            *self.trainer_args,
        ]


def manifests(job: TrainingJob) -> list[dict]:
    """The trainers' NetworkPolicy, the engine's job (and its headless Service), then (with
    job.tensorboard) TensorBoard's NetworkPolicy, Deployment and Service. Each policy comes
    before the pods it guards, so that none of them runs a moment without it."""
    job.validate()
    documents = [_trainers_network_policy(job)]
    documents += _tfjob(job) if job.engine == "tfjob" else _indexed_job(job)
    if job.tensorboard:
        documents += _tensorboard(job)
    return documents


def to_yaml(documents: list[dict]) -> str:
    """One YAML stream, in the order given, for `kubectl apply -f -`."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False)


class _Dumper(yaml.SafeDumper):
    """Writes a string of several lines (the indexed job's shell step) as a block, as it reads."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None
    ),
)


def _labels(name: str) -> dict:
    """The labels of an object and of its pods: what selectors and policies match on."""
    return {"app": name}


def _metadata(job: TrainingJob, name: str) -> dict:
    return {
        "name": name,
        **({"namespace": job.namespace} if job.namespace else {}),
        "labels": _labels(name),
    }


def _shared_volume(job: TrainingJob, read_only: bool) -> tuple[dict, dict]:
    """The claim as a pod volume, and its mount at LOGDIR."""
    access = {"readOnly": True} if read_only else {}
    return (
        {"name": "runs", "persistentVolumeClaim": {"claimName": job.claim, **access}},
        {"name": "runs", "mountPath": LOGDIR, **access},
    )


def _pod_spec(container: dict, volume: dict) -> dict:
    """One container, the claim as its volume, run as the image's user."""
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_USER_ID,
            "runAsGroup": IMAGE_USER_ID,
            "fsGroup": IMAGE_USER_ID,
        },
        "containers": [container],
        "volumes": [volume],
    }


def _trainer_pod(job: TrainingJob, name: str, port_name: str, **container: object) -> dict:
    """A trainer's pod template: the job's labels, the claim at LOGDIR, the GPUs, the gRPC port,
    and the engine's other container fields (command, ...)."""
    volume, mount = _shared_volume(job, read_only=False)
    container = {
        "name": name,
        "image": job.image,
        **container,
        "ports": [{"name": port_name, "containerPort": GRPC_PORT}],
        "volumeMounts": [mount],
    }
    if job.gpus_per_worker:
        container["resources"] = {"limits": {"nvidia.com/gpu": job.gpus_per_worker}}
    return {
        "metadata": {"labels": _labels(job.name)},
        "spec": _pod_spec(container, volume),
    }


def _tfjob(job: TrainingJob) -> list[dict]:
    def replicas(count):
        # A pod template of its own each: YAML would write a shared one as an anchor and alias.
        # The operator finds the training container, and its port, by these names.
        return {
            "replicas": count,
            "restartPolicy": "ExitCode",
            "template": _trainer_pod(
                job, "tensorflow", "tfjob-port", command=job.trainer_command()
            ),
        }

    specs = {"Chief": replicas(1)}
    if job.workers > 1:
        specs["Worker"] = replicas(job.workers - 1)
    return [
        {
            "apiVersion": "kubeflow.org/v1",
            "kind": "TFJob",
            "metadata": _metadata(job, job.name),
            "spec": {"tfReplicaSpecs": specs},
        }
    ]


# The indexed job's container command, before the trainer's: TF_CONFIG from the job's workers
# ($TF_CLUSTER, fixed by the launcher) and this pod's completion index, set by Kubernetes.
TF_CONFIG_FROM_INDEX = """\
export TF_CONFIG="$(printf '{"cluster": %s, "task": {"type": "worker", "index": %s}}' \\
    "$TF_CLUSTER" "$JOB_COMPLETION_INDEX")"
exec "$@"
"""


def _indexed_job(job: TrainingJob) -> list[dict]:
    service = f"{job.name}-workers"
    # Kubernetes names pod i of an Indexed Job `<job>-<i>`; the service is its DNS subdomain.
    workers = [f"{job.name}-{index}.{service}:{GRPC_PORT}" for index in range(job.workers)]
    pod = _trainer_pod(
        job,
        "trainer",
        "grpc",
        command=["sh", "-c", TF_CONFIG_FROM_INDEX, "sh"],
        args=job.trainer_command(),
        env=[{"name": "TF_CLUSTER", "value": json.dumps({"worker": workers})}],
    )
    pod["spec"].update(subdomain=service, restartPolicy="Never")  # Never: podFailurePolicy's.

    job_manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, job.name),
        "spec": {
            "completionMode": "Indexed",
            "completions": job.workers,
            "parallelism": job.workers,
            "backoffLimit": BACKOFF_LIMIT,
            # A replacement starts once the pod it replaces has stopped, never beside it: two
            # trainers are never the same worker. (The one value podFailurePolicy allows.)
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": pod_failure_policy("FailJob"),
            "template": pod,
        },
    }
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service),
        "spec": {
            "clusterIP": "None",
            "selector": _labels(job.name),
            # DNS names from the moment pods have addresses: workers meet before any is
            # ready.
            "publishNotReadyAddresses": True,
            "ports": [{"name": "grpc", "port": GRPC_PORT}],
        },
    }
    return [job_manifest, headless]


def pod_failure_policy(on_exit_1: str) -> dict:
    """An Indexed Job's podFailurePolicy for its container "trainer": `on_exit_1` (FailJob, or
    FailIndex) when the trainer exits 1; a disruption or an exit 143 retried without counting."""

    def on_exit(code):
        return {"containerName": "trainer", "operator": "In", "values": [code]}

    return {
        "rules": [
            # Bad flags, divergence, a broken run directory: a rerun would fail the same.
            {"action": on_exit_1, "onExitCodes": on_exit(1)},
            # Evicted, preempted, its node drained: not the trainer's doing.
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            # Checkpointed on SIGTERM, or stopped because a peer died (counted there).
            {"action": "Ignore", "onExitCodes": on_exit(PREEMPTED_EXIT_CODE)},
        ]
    }


def _trainers_network_policy(job: TrainingJob) -> dict:
    """Ingress to the trainers' gRPC port from the job's own trainers only."""
    return _network_policy(
        job,
        job.name,
        [
            {
                "from": [{"podSelector": {"matchLabels": _labels(job.name)}}],
                "ports": [{"protocol": "TCP", "port": GRPC_PORT}],
            }
        ],
    )


def _network_policy(job: TrainingJob, name: str, ingress: list[dict]) -> dict:
    """The pods labelled as `name` admit only `ingress` ([]: no pod)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(job, name),
        "spec": {
            "podSelector": {"matchLabels": _labels(name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _tensorboard(job: TrainingJob) -> list[dict]:
    """TensorBoard over every run on the claim, read-only; reach it with kubectl port-forward.

    Its NetworkPolicy admits no pod: TensorBoard has no login of its own, and port-forward,
    which the API server authorizes, reaches it from its node, where policies do not apply.
    """
    name = f"{job.name}-tensorboard"
    policy = _network_policy(job, name, [])
    volume, mount = _shared_volume(job, read_only=True)
    container = {
        "name": "tensorboard",
        "image": job.image,
        "command": [
            "python",
            "-m",
            "tensorboard.main",
            f"--logdir={LOGDIR}",
            "--bind_all",
            f"--port={TENSORBOARD_PORT}",
        ],
        "ports": [{"containerPort": TENSORBOARD_PORT}],
        "volumeMounts": [mount],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(job, name),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _labels(name)},
            "template": {
                "metadata": {"labels": _labels(name)},
                "spec": _pod_spec(container, volume),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, name),
        "spec": {
            "selector": _labels(name),
            "ports": [{"port": TENSORBOARD_PORT, "targetPort": TENSORBOARD_PORT}],
        },
    }
    return [policy, deployment, service]
