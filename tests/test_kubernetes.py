"""The Kubernetes manifests: what a cluster would be given, read back as YAML and checked against
Kubernetes' own API schemas and the training operator's TFJob schema."""

import copy
import dataclasses
import json
import pathlib
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from launch.kubernetes_lib import (
    GRPC_PORT,
    IMAGE_USER_ID,
    KUBERNETES_VERSION,
    LOGDIR,
    TrainingJob,
    manifests,
    to_yaml,
)
from launch.trainer_args import LaunchError
from tests.toolkit import REPOSITORY, environment, run_module

JOB = TrainingJob(
    image="registry.example.com/mlp:1",
    claim="mlp-runs",
    name="mlp-4x2",
    workers=4,
    gpus_per_worker=2,
    trainer_args=("--epochs=20", "--batch_size=512"),
)
INDEXED = dataclasses.replace(JOB, engine="indexed-job")
TRAINER_COMMAND = [
    "python",
    "-m",
    "trainer.train",
    "--strategy=multi_worker",
    f"--logdir={LOGDIR}",
    "--run_name=mlp-4x2",
    "--epochs=20",
    "--batch_size=512",
]
TFJOB_CRD = pathlib.Path(__file__).parent / "schemas" / "kubeflow.org_tfjobs.yaml"


def parsed(job: TrainingJob) -> dict[tuple[str, str], dict]:
    """{(kind, name): document}, in the stream's order."""
    text = to_yaml(manifests(job))
    assert "&id" not in text  # Every pod spelt out, no YAML anchors for kubectl to resolve.
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(text)}


def trainer_containers(tfjob: dict) -> dict[str, tuple[int, dict, dict]]:
    """{replica type: (replicas, its restart policy and pod spec, its one container)}."""
    return {
        kind: (spec["replicas"], spec, spec["template"]["spec"]["containers"][0])
        for kind, spec in tfjob["spec"]["tfReplicaSpecs"].items()
    }


def trainer_templates(documents: dict) -> list[dict]:
    """The pod templates of the job's trainers, whichever the engine."""
    if ("TFJob", "mlp-4x2") in documents:
        return [
            spec["template"]
            for spec in documents["TFJob", "mlp-4x2"]["spec"]["tfReplicaSpecs"].values()
        ]
    return [documents["Job", "mlp-4x2"]["spec"]["template"]]


def selects(selector: dict, labels: dict) -> bool:
    return selector["matchLabels"].items() <= labels.items()


def test_a_tfjob_of_a_chief_and_workers_sharing_the_claim():
    documents = parsed(JOB)
    assert list(documents) == [
        ("NetworkPolicy", "mlp-4x2"),
        ("TFJob", "mlp-4x2"),
        ("NetworkPolicy", "mlp-4x2-tensorboard"),
        ("Deployment", "mlp-4x2-tensorboard"),
        ("Service", "mlp-4x2-tensorboard"),
    ]  # Each policy before the pods it guards.
    tfjob = documents["TFJob", "mlp-4x2"]
    assert tfjob["apiVersion"] == "kubeflow.org/v1"
    replicas = trainer_containers(tfjob)
    assert {kind: count for kind, (count, _, _) in replicas.items()} == {"Chief": 1, "Worker": 3}
    for _, spec, container in replicas.values():
        assert spec["restartPolicy"] == "ExitCode"
        assert container["name"] == "tensorflow" and container["image"] == JOB.image
        assert container["command"] == TRAINER_COMMAND
        assert container["ports"] == [{"name": "tfjob-port", "containerPort": GRPC_PORT}]
        assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}}
        assert container["volumeMounts"] == [{"name": "runs", "mountPath": LOGDIR}]
        assert spec["template"]["spec"]["volumes"] == [
            {"name": "runs", "persistentVolumeClaim": {"claimName": "mlp-runs"}}
        ]

    deployment = documents["Deployment", "mlp-4x2-tensorboard"]
    service = documents["Service", "mlp-4x2-tensorboard"]
    [board] = deployment["spec"]["template"]["spec"]["containers"]
    assert f"--logdir={LOGDIR}" in board["command"]
    assert board["volumeMounts"] == [{"name": "runs", "mountPath": LOGDIR, "readOnly": True}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert "type" not in service["spec"]  # ClusterIP: reached through kubectl port-forward.
    assert service["spec"]["ports"] == [{"port": 6006, "targetPort": 6006}]


def test_one_worker_is_a_lone_chief_and_cpu_jobs_ask_for_no_gpus():
    job = dataclasses.replace(
        JOB, workers=1, gpus_per_worker=0, tensorboard=False, namespace="ml", trainer_args=()
    )
    documents = parsed(job)
    assert [kind for kind, _ in documents] == ["NetworkPolicy", "TFJob"]
    assert {doc["metadata"]["namespace"] for doc in documents.values()} == {"ml"}
    [(kind, (count, _, container))] = trainer_containers(documents["TFJob", "mlp-4x2"]).items()
    assert (kind, count) == ("Chief", 1) and "resources" not in container


def test_an_indexed_job_of_workers_that_find_each_other_by_dns():
    documents = parsed(INDEXED)
    assert list(documents) == [
        ("NetworkPolicy", "mlp-4x2"),
        ("Job", "mlp-4x2"),
        ("Service", "mlp-4x2-workers"),
        ("NetworkPolicy", "mlp-4x2-tensorboard"),
        ("Deployment", "mlp-4x2-tensorboard"),
        ("Service", "mlp-4x2-tensorboard"),
    ]
    job, headless = documents["Job", "mlp-4x2"], documents["Service", "mlp-4x2-workers"]
    spec, pod = job["spec"], job["spec"]["template"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] >= 1 and spec["podReplacementPolicy"] == "Failed"
    # Exit 1 fails the job at once; a disruption, or a trainer that checkpointed on SIGTERM or
    # lost a peer (exit 143), is retried without counting; anything else counts.
    assert spec["podFailurePolicy"]["rules"] == [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1]},
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {
            "action": "Ignore",
            "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [143]},
        },
    ]
    assert pod["spec"]["restartPolicy"] == "Never"  # What podFailurePolicy requires.
    [container] = pod["spec"]["containers"]
    assert container["name"] == "trainer" and container["args"] == TRAINER_COMMAND
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    assert container["volumeMounts"] == [{"name": "runs", "mountPath": LOGDIR}]
    assert pod["spec"]["volumes"] == [
        {"name": "runs", "persistentVolumeClaim": {"claimName": "mlp-runs"}}
    ]
    # Pod i is <job>-<i>.<subdomain>: the headless service selecting exactly the job's pods.
    assert pod["spec"]["subdomain"] == "mlp-4x2-workers"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == pod["metadata"]["labels"]
    assert headless["spec"]["publishNotReadyAddresses"] is True


@pytest.mark.slow
@pytest.mark.parametrize("index", range(4))
def test_each_indexed_pod_runs_the_trainer_with_its_own_tf_config(index):
    """The container's command, run by sh as Kubernetes would, with the pod's environment; the
    trainer it starts is replaced by the trainer's own check of TF_CONFIG, which prints it."""
    documents = parsed(INDEXED)
    pod = documents["Job", "mlp-4x2"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    show_tf_config = [
        sys.executable,
        "-c",
        "import json; from trainer.distribution."
        "strategies import read_tf_config; print(json.dumps(read_tf_config()))",
    ]
    env = {
        **environment(),
        **{var["name"]: var["value"] for var in container["env"]},
        "JOB_COMPLETION_INDEX": str(index),
    }  # Set by Kubernetes in every Indexed Job's pod.
    done = subprocess.run(
        container["command"] + show_tf_config,
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    )
    tf_config = json.loads(done.stdout)
    workers = [f"mlp-4x2-{i}.{pod['subdomain']}:{GRPC_PORT}" for i in range(4)]
    assert tf_config == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
    assert container["ports"] == [{"name": "grpc", "containerPort": GRPC_PORT}]


@pytest.mark.parametrize("job", [JOB, INDEXED], ids=["tfjob", "indexed-job"])
def test_every_pod_runs_as_the_images_user_with_the_claim_writable_to_it(job):
    documents = parsed(job)
    board = documents["Deployment", "mlp-4x2-tensorboard"]["spec"]["template"]
    for template in [*trainer_templates(documents), board]:
        assert template["spec"]["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_USER_ID,
            "runAsGroup": IMAGE_USER_ID,
            "fsGroup": IMAGE_USER_ID,
        }
    # The user the Dockerfile creates and runs as.
    dockerfile = (REPOSITORY / "Dockerfile").read_text()
    assert f"useradd --create-home --uid {IMAGE_USER_ID} --user-group trainer" in dockerfile
    assert "\nUSER trainer\n" in dockerfile


@pytest.mark.parametrize("job", [JOB, INDEXED], ids=["tfjob", "indexed-job"])
def test_network_policies_admit_only_the_job_to_its_trainers_and_no_pod_to_tensorboard(job):
    documents = parsed(job)
    trainers = documents["NetworkPolicy", "mlp-4x2"]["spec"]
    for template in trainer_templates(documents):
        assert trainers["podSelector"]["matchLabels"] == template["metadata"]["labels"]
    assert trainers["policyTypes"] == ["Ingress"]
    assert trainers["ingress"] == [
        {
            "from": [{"podSelector": trainers["podSelector"]}],
            "ports": [{"protocol": "TCP", "port": GRPC_PORT}],
        }
    ]

    board = documents["NetworkPolicy", "mlp-4x2-tensorboard"]["spec"]
    board_labels = documents["Deployment", "mlp-4x2-tensorboard"]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert board["podSelector"]["matchLabels"] == board_labels
    assert (board["policyTypes"], board["ingress"]) == (["Ingress"], [])
    # Neither policy's pods are the other's: TensorBoard cannot reach a trainer.
    assert not selects(trainers["podSelector"], board_labels)
    for template in trainer_templates(documents):
        assert not selects(board["podSelector"], template["metadata"]["labels"])


def closed(schema):
    """A CRD schema as the API server applies it under strict field validation (kubectl's
    default): a field it does not list is an error, not silently dropped."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="module")
def tfjob_schema():
    crd = yaml.safe_load(TFJOB_CRD.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return closed(version["schema"]["openAPIV3Schema"])


def validate(document: dict, tfjob_schema: dict) -> None:
    """Raises jsonschema.ValidationError unless the cluster would take `document` as it is."""
    if document["kind"] == "TFJob":
        jsonschema.validate(document, tfjob_schema)
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    "job",
    [
        JOB,
        INDEXED,
        dataclasses.replace(JOB, workers=1, gpus_per_worker=0, namespace="ml", tensorboard=False),
        dataclasses.replace(INDEXED, workers=1, gpus_per_worker=0, namespace="ml"),
    ],
    ids=["tfjob", "indexed-job", "tfjob-1-cpu", "indexed-job-1-cpu"],
)
def test_every_manifest_is_valid_against_the_real_schemas(job, tfjob_schema):
    for document in manifests(job):
        validate(document, tfjob_schema)


@pytest.mark.parametrize(
    "job, kind, path",
    [
        (JOB, "TFJob", ["spec", "tfReplicaSpecs", "Chief", "template", "spec", "containers", 0]),
        (INDEXED, "Job", ["spec", "template", "spec"]),
        (INDEXED, "Service", ["spec"]),
        (INDEXED, "NetworkPolicy", ["spec"]),
    ],
)
def test_the_schemas_refuse_a_misspelt_field(job, kind, path, tfjob_schema):
    """What the validation above is worth: a field the API does not have fails it."""
    document = copy.deepcopy(next(d for d in manifests(job) if d["kind"] == kind))
    target = document
    for key in path:
        target = target[key]
    target["subdomian"] = "typo"
    with pytest.raises(jsonschema.ValidationError, match="subdomian"):
        validate(document, tfjob_schema)


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"workers": 0}, "--workers=0: must be at least 1"),
        ({"gpus_per_worker": -1}, "--gpus_per_worker=-1: must be 0"),
        ({"image": ""}, "--image=: required"),
        ({"claim": ""}, "--claim=: required"),
        ({"name": "MLP_run"}, "--name=MLP_run: must be lowercase"),
        ({"namespace": "Team A"}, "--namespace=Team A: must be lowercase"),
        ({"engine": "job"}, "--engine=job: must be one of tfjob, indexed-job"),
        ({"trainer_args": ("--logdir=/tmp",)}, "--logdir is set by the manifests"),
        ({"trainer_args": ("--strategy=mirrored",)}, "--strategy is set by the manifests"),
        ({"trainer_args": ("--epoch=3",)}, "--epoch is not a trainer flag"),
        ({"trainer_args": ("epochs=3",)}, "expected --<trainer flag>=<value>"),
        ({"trainer_args": ("--epochs=0",)}, "--epochs=0: must be at least 1"),
        # 4 pods x 2 GPUs: 8 replicas in sync, as the trainer will count them.
        (
            {"trainer_args": ("--batch_size=500",)},
            "--batch_size=500: must be divisible by the 8 replicas in sync",
        ),
        (
            {"trainer_args": ("--batch_size=12",), "gpus_per_worker": 0, "workers": 8},
            "--batch_size=12: must be divisible by the 8 replicas in sync",
        ),
    ],
)
@pytest.mark.parametrize("engine", ["tfjob", "indexed-job"])
def test_bad_input_is_refused_naming_the_flag(change, problem, engine):
    with pytest.raises(LaunchError) as error:
        manifests(dataclasses.replace(JOB, **{"engine": engine, **change}))
    assert problem in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("engine, kind", [("tfjob", "TFJob"), ("indexed-job", "Job")])
def test_the_command_line_prints_the_manifests_as_yaml(engine, kind):
    # Its bad input is in test_command_lines.py.
    done = run_module(
        "launch.kubernetes",
        "--claim=mlp-runs",
        "--image=mlp:1",
        "--workers=2",
        f"--engine={engine}",
        "--",
        "--epochs=1",
    )
    assert done.returncode == 0, done.stderr
    # Neither TensorFlow's start-up lines nor the trainer's note on its warm-up: each pod logs it.
    assert done.stderr == ""
    documents = list(yaml.safe_load_all(done.stdout))
    [job] = [doc for doc in documents if doc["kind"] == kind]
    command = (
        trainer_containers(job)["Worker"][2]["command"]
        if kind == "TFJob"
        else job["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert command[-1] == "--epochs=1"
