"""Writes the Kubernetes manifests of a multi-worker run to stdout, for `kubectl apply -f -`.

    python -m launch.kubernetes --image=registry.example.com/mlp:latest --claim=mlp-runs \\
        --name=mlp-4x1 --workers=4 --gpus_per_worker=1 -- --epochs=20 --batch_size=512 \\
        | kubectl apply -f -

--workers pods, each running
`python -m trainer.train --strategy=multi_worker --logdir=/mnt/runs --run_name=<--name> <flags
after -->` with --gpus_per_worker GPUs and the PersistentVolumeClaim --claim mounted at
/mnt/runs: by default a Kubeflow TFJob of a chief and --workers - 1 workers (the training
operator must be installed); with --engine=indexed-job an Indexed Job and a headless Service,
which any Kubernetes runs. A NetworkPolicy admits only the job's own pods to the trainers.
Then, unless --notensorboard, a TensorBoard Deployment and Service over the claim:
kubectl port-forward service/<name>-tensorboard 6006.
"""

import sys

from absl import app, flags

# Before the imports that load TensorFlow (checking trainer flags does): it sets up what the
# terminal shows of it.
from trainer.common import terminal  # isort: split

from launch.kubernetes_lib import ENGINES, TrainingJob, manifests, to_yaml
from launch.trainer_args import LaunchError

_DEFAULTS = TrainingJob(image="", claim="")

flags.DEFINE_string(
    "image",
    _DEFAULTS.image,
    "Container image with this repository as its working directory and its requirements installed.",
)
flags.DEFINE_string(
    "claim",
    _DEFAULTS.claim,
    "PersistentVolumeClaim every pod mounts at the logdir (ReadWriteMany when "
    "pods may run on several nodes).",
)
flags.DEFINE_enum(
    "engine",
    _DEFAULTS.engine,
    ENGINES,
    "What runs the pods: tfjob, Kubeflow's training operator; indexed-job, "
    "Kubernetes' own Job controller (an Indexed Job and a headless Service).",
)
flags.DEFINE_string("name", _DEFAULTS.name, "The job's name, and the run's.")
flags.DEFINE_integer("workers", _DEFAULTS.workers, "Training processes: 1 chief + N-1 workers.")
flags.DEFINE_integer(
    "gpus_per_worker",
    _DEFAULTS.gpus_per_worker,
    "nvidia.com/gpu limit of each training pod; 0: CPU only.",
)
flags.DEFINE_string("namespace", _DEFAULTS.namespace, "Namespace; empty: kubectl's current one.")
flags.DEFINE_bool(
    "tensorboard",
    _DEFAULTS.tensorboard,
    "Also a TensorBoard Deployment and Service reading the claim.",
)

FLAGS = flags.FLAGS


def main(argv):
    job = TrainingJob(
        image=FLAGS.image,
        claim=FLAGS.claim,
        name=FLAGS.name,
        workers=FLAGS.workers,
        gpus_per_worker=FLAGS.gpus_per_worker,
        namespace=FLAGS.namespace,
        tensorboard=FLAGS.tensorboard,
        trainer_args=tuple(argv[1:]),
        engine=FLAGS.engine,
    )
    try:
        documents = manifests(job)
    except LaunchError as e:
        terminal.exit_with_error(e)
    sys.stdout.write(to_yaml(documents))


if __name__ == "__main__":
    app.run(main)
