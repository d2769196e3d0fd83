"""The Kubernetes manifests: what a cluster would be given, read back as YAML."""

import dataclasses

import pytest
import yaml

from launch.kubernetes_lib import LOGDIR, TrainingJob, manifests, to_yaml
from launch.trainer_args import LaunchError
from tests.toolkit import run_module

JOB = TrainingJob(image="registry.example.com/mlp:1", claim="mlp-runs", name="mlp-4x2",
                  workers=4, gpus_per_worker=2, trainer_args=("--epochs=20", "--batch_size=512"))


def parsed(job: TrainingJob) -> list[dict]:
    text = to_yaml(manifests(job))
    assert "&id" not in text  # Every pod spelt out, no YAML anchors for kubectl to resolve.
    return list(yaml.safe_load_all(text))


def trainer_containers(tfjob: dict) -> dict[str, tuple[int, dict, dict]]:
    """{replica type: (replicas, its restart policy and pod spec, its one container)}."""
    return {kind: (spec["replicas"], spec, spec["template"]["spec"]["containers"][0])
            for kind, spec in tfjob["spec"]["tfReplicaSpecs"].items()}


def test_a_tfjob_of_a_chief_and_workers_sharing_the_claim():
    tfjob, deployment, service = parsed(JOB)
    assert (tfjob["apiVersion"], tfjob["kind"], tfjob["metadata"]["name"]) == (
        "kubeflow.org/v1", "TFJob", "mlp-4x2")
    replicas = trainer_containers(tfjob)
    assert {kind: count for kind, (count, _, _) in replicas.items()} == {"Chief": 1, "Worker": 3}
    for count, spec, container in replicas.values():
        assert spec["restartPolicy"] == "ExitCode"
        assert container["name"] == "tensorflow" and container["image"] == JOB.image
        assert container["command"] == [
            "python", "-m", "trainer.train", "--strategy=multi_worker", f"--logdir={LOGDIR}",
            "--run_name=mlp-4x2", "--epochs=20", "--batch_size=512"]
        assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}}
        assert container["volumeMounts"] == [{"name": "runs", "mountPath": LOGDIR}]
        assert spec["template"]["spec"]["volumes"] == [
            {"name": "runs", "persistentVolumeClaim": {"claimName": "mlp-runs"}}]

    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    [board] = deployment["spec"]["template"]["spec"]["containers"]
    assert f"--logdir={LOGDIR}" in board["command"]
    assert board["volumeMounts"] == [{"name": "runs", "mountPath": LOGDIR, "readOnly": True}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert service["spec"]["ports"] == [{"port": 6006, "targetPort": 6006}]


def test_one_worker_is_a_lone_chief_and_cpu_jobs_ask_for_no_gpus():
    job = dataclasses.replace(JOB, workers=1, gpus_per_worker=0, tensorboard=False,
                              namespace="ml")
    [tfjob] = parsed(job)
    assert tfjob["metadata"]["namespace"] == "ml"
    [(kind, (count, _, container))] = trainer_containers(tfjob).items()
    assert (kind, count) == ("Chief", 1) and "resources" not in container


@pytest.mark.parametrize("change, problem", [
    ({"workers": 0}, "--workers=0: must be at least 1"),
    ({"gpus_per_worker": -1}, "--gpus_per_worker=-1: must be 0"),
    ({"image": ""}, "--image=: required"),
    ({"claim": ""}, "--claim=: required"),
    ({"name": "MLP_run"}, "--name=MLP_run: must be lowercase"),
    ({"namespace": "Team A"}, "--namespace=Team A: must be lowercase"),
    ({"trainer_args": ("--logdir=/tmp",)}, "--logdir is set by the manifests"),
    ({"trainer_args": ("--strategy=mirrored",)}, "--strategy is set by the manifests"),
    ({"trainer_args": ("--epoch=3",)}, "--epoch is not a trainer flag"),
    ({"trainer_args": ("epochs=3",)}, "expected --<trainer flag>=<value>"),
])
def test_bad_input_is_refused_naming_the_flag(change, problem):
    with pytest.raises(LaunchError) as error:
        manifests(dataclasses.replace(JOB, **change))
    assert problem in str(error.value)


def test_the_command_line_prints_the_manifests_as_yaml():
    # Its bad input is in test_command_lines.py.
    done = run_module("launch.kubernetes", "--claim=mlp-runs", "--image=mlp:1", "--workers=2",
                      "--", "--epochs=3")
    assert done.returncode == 0, done.stderr
    tfjob = next(yaml.safe_load_all(done.stdout))
    assert trainer_containers(tfjob)["Worker"][2]["command"][-1] == "--epochs=3"
