"""launch.sweep --engine=kubernetes: its manifests checked against Kubernetes' own API schemas,
and each index's pod command run here, as its pod would run it, to the run of that index."""

import json
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from launch.kubernetes_lib import IMAGE_USER_ID, KUBERNETES_VERSION, LOGDIR, TrainingJob, to_yaml
from launch.sweep_kubernetes import PLAN_MOUNT, sweep_dir_on_claim, sweep_manifests
from launch.sweep_plan import PLAN_FILE, plan_sweep
from launch.sweep_report import LOG_FILE
from tests.test_sweep import TINY
from tests.toolkit import REPOSITORY, environment, finish, run_module
from trainer.run.files import FLAGS_FILE, RESULT_FILE

JOB = TrainingJob(image="registry.example.com/mlp:1", claim="mlp-runs", name="mlp-sweep")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    space = tmp_path_factory.mktemp("space") / "space.json"
    space.write_text(json.dumps({"learning_rate": {"min": 1e-3, "max": 1e-2, "scaling": "log"}}))
    return plan_sweep(
        [],
        sweep_dir_on_claim("sweep1"),
        trainer_args=TINY,
        search=str(space),
        trials=2,
    )


def parsed(sweep, parallel=1) -> dict[tuple[str, str], dict]:
    """{(kind, name): document}, in the stream's order, as kubectl would read them."""
    text = to_yaml(sweep_manifests(sweep, JOB, parallel))
    assert "&id" not in text
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(text)}


def test_every_manifest_is_strictly_valid_against_the_real_schemas(sweep):
    for document in sweep_manifests(sweep, JOB, 2):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_an_indexed_job_of_a_pod_a_run_whose_failures_stay_in_their_index(sweep):
    documents = parsed(sweep)
    assert list(documents) == [
        ("NetworkPolicy", "mlp-sweep"),
        ("ConfigMap", "mlp-sweep-plan"),
        ("Job", "mlp-sweep"),
        ("NetworkPolicy", "mlp-sweep-tensorboard"),
        ("Deployment", "mlp-sweep-tensorboard"),
        ("Service", "mlp-sweep-tensorboard"),
    ]  # Each policy before the pods it guards, the plan before the pods that read it.
    spec = documents["Job", "mlp-sweep"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 1)
    assert spec["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in spec
    assert spec["podFailurePolicy"]["rules"][0] == {
        "action": "FailIndex",  # Not FailJob: the other runs go on.
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1]},
    }
    assert [rule["action"] for rule in spec["podFailurePolicy"]["rules"][1:]] == ["Ignore"] * 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": IMAGE_USER_ID,
        "runAsGroup": IMAGE_USER_ID,
        "fsGroup": IMAGE_USER_ID,
    }
    assert pod["volumes"] == [
        {"name": "runs", "persistentVolumeClaim": {"claimName": "mlp-runs"}},
        {"name": "plan", "configMap": {"name": "mlp-sweep-plan"}},
    ]
    [container] = pod["containers"]
    assert "ports" not in container  # A run is one pod: it serves nothing.
    assert container["volumeMounts"] == [
        {"name": "runs", "mountPath": LOGDIR},
        {"name": "plan", "mountPath": PLAN_MOUNT, "readOnly": True},
    ]
    # The plan in the ConfigMap is the sweep's, its runs under the claim's mount.
    assert json.loads(documents["ConfigMap", "mlp-sweep-plan"]["data"][PLAN_FILE]) == sweep.plan()
    assert {"name": "SWEEP_DIR", "value": f"{LOGDIR}/sweep1"} in container["env"]
    # The runs' policy admits no pod; it and TensorBoard's select only their own pods.
    policy = documents["NetworkPolicy", "mlp-sweep"]["spec"]
    assert (policy["policyTypes"], policy["ingress"]) == (["Ingress"], [])
    assert policy["podSelector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    board = documents["Deployment", "mlp-sweep-tensorboard"]["spec"]["template"]
    assert board["metadata"]["labels"] != spec["template"]["metadata"]["labels"]
    assert board["spec"]["securityContext"] == pod["securityContext"]


@pytest.mark.slow
def test_each_index_runs_the_trainer_of_its_own_run(sweep, tmp_path):
    """Each index's container command, run by this checkout's Python as the image's would be,
    with the pod's environment: the index set, the ConfigMap's plan and the claim's directory
    where this machine has them."""
    documents = parsed(sweep)
    plan_file = tmp_path / "plan" / PLAN_FILE
    plan_file.parent.mkdir()
    plan_file.write_text(documents["ConfigMap", "mlp-sweep-plan"]["data"][PLAN_FILE])
    sweep_dir = tmp_path / "claim" / "sweep1"
    [container] = documents["Job", "mlp-sweep"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][0] == "python"
    command = [sys.executable, *container["command"][1:]]
    pod_env = {var["name"]: var["value"] for var in container["env"]}
    assert set(pod_env) == {"SWEEP_PLAN", "SWEEP_DIR"}
    runs = sweep.plan()["runs"]
    pods = [
        subprocess.Popen(
            command,
            cwd=REPOSITORY,
            env={
                **environment(),
                "SWEEP_PLAN": str(plan_file),
                "SWEEP_DIR": str(sweep_dir),
                "JOB_COMPLETION_INDEX": str(index),  # Set by Kubernetes in each pod.
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(len(runs))
    ]
    for pod in pods:
        done = finish(pod)
        assert done.returncode == 0, done.stdout + done.stderr
    for run in runs:
        run_dir = sweep_dir / run["name"]
        flags = (run_dir / FLAGS_FILE).read_text()
        for flag in run["flags"]:
            if not flag.startswith("--run_name"):
                assert f"{flag}\n" in flags
        assert json.loads((run_dir / RESULT_FILE).read_text())["steps"] == 50
        assert "launch.sweep: " in (run_dir / LOG_FILE).read_text()
    # What --status reads where the claim is mounted: the plan the pods kept, every run done.
    assert json.loads((sweep_dir / PLAN_FILE).read_text()) == sweep.plan()
    status = run_module("launch.sweep", "--status", f"--sweep_dir={sweep_dir}")
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("| finished |") == 2, status.stdout
