"""Kubernetes manifests for one multi-worker run: a Kubeflow TFJob, and TensorBoard beside it.

The training operator starts the TFJob's pods and sets each one's TF_CONFIG, which is all
`--strategy=multi_worker` needs. The chief is one of the N training processes (it computes like
the others, and also writes the run's files); the other N-1 are workers. Every pod mounts the
same PersistentVolumeClaim at the logdir, so whichever pod restarts finds the run's
checkpoints there. `restartPolicy: ExitCode` restarts a pod whose trainer exited 128 or more
(143: preempted by SIGTERM, checkpoint saved; or killed by a signal) to resume from them, and
leaves one that exited 1 (bad flags, divergence) failed instead of restarting it forever.
"""

import dataclasses
import re

import yaml

from launch.trainer_args import LaunchError, check_trainer_args

LOGDIR = "/mnt/runs"  # Where the shared volume is mounted in every pod.
TENSORBOARD_PORT = 6006
# Trainer flags the manifests set for every pod, and what the user sets instead.
SET_BY_MANIFESTS = {"strategy": "the manifests (--strategy=multi_worker)",
                    "logdir": f"the manifests (the shared volume at {LOGDIR})",
                    "run_name": "--name (the run is named after the job)"}
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

    def validate(self) -> "TrainingJob":
        """Raises LaunchError naming the first bad flag; returns self for chaining."""
        def need(ok, flag, problem):
            if not ok:
                raise LaunchError(f"--{flag}={getattr(self, flag)}: {problem}")

        need(self.image.strip(), "image", "required: the container image holding this repository")
        need(re.fullmatch(_DNS_LABEL, self.name) and len(self.name) <= _MAX_NAME, "name",
             f"must be lowercase letters, digits and -, at most {_MAX_NAME} characters")
        need(self.workers >= 1, "workers", "must be at least 1 (the chief)")
        need(self.gpus_per_worker >= 0, "gpus_per_worker", "must be 0 (CPU only) or more")
        need(re.fullmatch(_DNS_LABEL, self.claim), "claim",
             "required: the name of a PersistentVolumeClaim (lowercase letters, digits and -)")
        need(not self.namespace or re.fullmatch(_DNS_LABEL, self.namespace), "namespace",
             "must be lowercase letters, digits and -")
        check_trainer_args(list(self.trainer_args), SET_BY_MANIFESTS, replicas=self.replicas)
        return self

    @property
    def replicas(self) -> int:
        """Replicas in sync: one per GPU, or one per CPU-only pod."""
        return self.workers * max(1, self.gpus_per_worker)

    def trainer_command(self) -> list[str]:
        return ["python", "-m", "trainer.train", "--strategy=multi_worker", f"--logdir={LOGDIR}",
                f"--run_name={self.name}", *self.trainer_args]


def manifests(job: TrainingJob) -> list[dict]:
    """The TFJob, then (with job.tensorboard) a TensorBoard Deployment and its Service."""
    job.validate()
    documents = [_tfjob(job)]
    if job.tensorboard:
        documents += _tensorboard(job)
    return documents


def to_yaml(documents: list[dict]) -> str:
    """One YAML stream, in the order given, for `kubectl apply -f -`."""
    return yaml.safe_dump_all(documents, sort_keys=False)


def _metadata(job: TrainingJob, name: str) -> dict:
    return {"name": name, **({"namespace": job.namespace} if job.namespace else {}),
            "labels": {"app": name}}


def _shared_volume(job: TrainingJob, read_only: bool) -> tuple[dict, dict]:
    """The claim as a pod volume, and its mount at LOGDIR."""
    access = {"readOnly": True} if read_only else {}
    return ({"name": "runs", "persistentVolumeClaim": {"claimName": job.claim, **access}},
            {"name": "runs", "mountPath": LOGDIR, **access})


def _tfjob(job: TrainingJob) -> dict:
    def replicas(count):
        # A pod template of its own each: YAML would write a shared one as an anchor and alias.
        return {"replicas": count, "restartPolicy": "ExitCode",
                "template": {"spec": _trainer_pod(job)}}

    specs = {"Chief": replicas(1)}
    if job.workers > 1:
        specs["Worker"] = replicas(job.workers - 1)
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": _metadata(job, job.name), "spec": {"tfReplicaSpecs": specs}}


def _trainer_pod(job: TrainingJob) -> dict:
    volume, mount = _shared_volume(job, read_only=False)
    container = {
        "name": "tensorflow",  # The operator finds the training container by this name.
        "image": job.image,
        "command": job.trainer_command(),
        "volumeMounts": [mount],
    }
    if job.gpus_per_worker:
        container["resources"] = {"limits": {"nvidia.com/gpu": job.gpus_per_worker}}
    return {"containers": [container], "volumes": [volume]}


def _tensorboard(job: TrainingJob) -> list[dict]:
    """TensorBoard over every run on the claim, read-only; reach it with kubectl port-forward."""
    name = f"{job.name}-tensorboard"
    volume, mount = _shared_volume(job, read_only=True)
    container = {"name": "tensorboard", "image": job.image,
                 "command": ["python", "-m", "tensorboard.main", f"--logdir={LOGDIR}",
                             "--bind_all", f"--port={TENSORBOARD_PORT}"],
                 "ports": [{"containerPort": TENSORBOARD_PORT}],
                 "volumeMounts": [mount]}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(job, name),
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [container], "volumes": [volume]}}}}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _metadata(job, name),
        "spec": {"selector": {"app": name},
                 "ports": [{"port": TENSORBOARD_PORT, "targetPort": TENSORBOARD_PORT}]}}
    return [deployment, service]
