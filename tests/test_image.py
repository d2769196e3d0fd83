"""The Dockerfile's image, built by `make image` and run (tests/image_build.py).

The image is built once for the module, on a Debian base made by debootstrap and kept between
runs on the machine; then a short training runs inside it through the image's own command and
its export is loaded here, the manifests' commands of both engines are run in it, its layers
are searched for the build's CA, and a code change is shown to leave the requirements' layers
as they were. Without podman, buildah and debootstrap (`make test` installs them) these fail,
not skip. Cold (no base, no build cache) the module takes about 5 minutes, most of it pip.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from data import mnist
from launch import kubernetes_lib
from tests import image_build
from tests.toolkit import command_line
from trainer.common.paths import REPOSITORY
from trainer.config import TrainConfig
from trainer.recipe import EXPORT_DIR
from trainer.run import files

pytestmark = pytest.mark.slow  # Builds an image and trains inside it.

# A name of this session's own: another session on the machine builds its own image at once.
IMAGE = f"localhost/mnist-mlp-test:{os.getpid()}"
SOURCE_WITH_MARKER = "/diff/app/tests/image_build.py"  # In the code's layer.
CONFIG = TrainConfig(
    hidden_sizes=(32,),
    epochs=1,
    warmup_epochs=0.0,
    data_source="bundled",
    logdir=kubernetes_lib.LOGDIR,
    run_name="in-image",
)


@pytest.fixture(scope="module")
def base():
    return image_build.base_image()


@pytest.fixture(scope="module")
def built(base):
    # Taken just before make takes its own: the two agree unless someone commits in between.
    commit = files.git_commit()
    build = image_build.make_image(IMAGE, base)
    assert build.commit == commit
    yield build
    image_build.keep_as_cache(IMAGE)


@pytest.fixture(scope="module")
def trained(built, tmp_path_factory):
    """CONFIG trained in the image through its own command, the run's volume mounted where the
    manifests mount theirs; returns the run directory on the host."""
    volume = tmp_path_factory.mktemp("volume")
    volume.chmod(0o777)  # The image's user is not root, as on a cluster's volume.
    entrypoint = image_build.config(IMAGE)["Entrypoint"]
    ran = image_build.run(
        IMAGE, [*entrypoint, *command_line(CONFIG)], volumes={volume: kubernetes_lib.LOGDIR}
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "test accuracy:" in ran.stdout
    return volume / CONFIG.run_name


def test_make_image_says_which_tool_and_the_size(built):
    assert f"make image: podman builds {IMAGE} from commit {built.commit}\n" in built.output
    size = int(re.search(rf"^make image: built {IMAGE}, (\d+) MB$", built.output, re.M)[1])
    assert 1000 < size < 6000  # TensorFlow and its dependencies: about 2.8 GB.


def test_the_image_runs_as_its_own_user_in_the_repository(built):
    config = image_build.config(IMAGE)
    assert config["WorkingDir"] == "/app"
    assert config["User"] == "trainer"
    assert config["Entrypoint"] == ["python", "-m", "trainer.train"]
    whoami = image_build.run(IMAGE, ["sh", "-c", "id -u; ls requirements.txt Dockerfile"])
    assert whoami.stdout.split() == ["1000", "Dockerfile", "requirements.txt"], whoami
    assert not image_build.run(IMAGE, ["sh", "-c", "ls -d .git .venv runs/*"]).stdout.strip()


def test_a_run_in_the_image_records_the_commit_it_was_built_from(built, trained):
    flags = (trained / files.FLAGS_FILE).read_text().splitlines()
    assert flags[0] == f"# git commit {built.commit}"
    assert json.loads((trained / files.RESULT_FILE).read_text())["git_commit"] == built.commit


def test_the_export_of_a_run_in_the_image_serves_here(trained):
    (export,) = (trained / EXPORT_DIR).iterdir()
    served = tf.saved_model.load(str(export))
    test = mnist.load("bundled").test
    probabilities = served.signatures["serving_default"](images=tf.constant(test.images[:1000]))
    predicted = np.argmax(probabilities["probabilities"].numpy(), axis=1)
    assert np.mean(predicted == test.labels[:1000]) > 0.8


@pytest.mark.parametrize("engine", kubernetes_lib.ENGINES)
def test_the_manifests_commands_reach_the_trainer_in_the_image(built, engine):
    """Each engine's container command, as its manifests give it, in the image: its shell step,
    `python`, the trainer found from the working directory. A flag the trainer refuses ends it
    before it starts a server (TF_CONFIG names a cluster that does not exist here)."""
    job = kubernetes_lib.TrainingJob(image=IMAGE, claim="runs", engine=engine, workers=2)
    (pod,) = [
        document["spec"]["tfReplicaSpecs"]["Chief"]["template"]
        if engine == "tfjob"
        else document["spec"]["template"]
        for document in kubernetes_lib.manifests(job)
        if document["kind"] in ("TFJob", "Job")
    ]
    (container,) = pod["spec"]["containers"]
    assert "workingDir" not in container  # The image's.
    env = {variable["name"]: variable["value"] for variable in container.get("env", [])}
    if engine == "indexed-job":
        env["JOB_COMPLETION_INDEX"] = "0"
    else:  # What the training operator sets.
        env["TF_CONFIG"] = json.dumps(
            {"cluster": {"chief": ["mlp-train-chief-0:2222"]}, "task": {"type": "chief"}}
        )
    command = [*container["command"], *container.get("args", []), "--epochs=0"]
    ran = image_build.run(IMAGE, command, env=env)
    assert ran.returncode == 1, ran
    # buildah adds its own last line, `Error: exit status 1`.
    assert "trainer.train: error: --epochs=0: must be at least 1" in ran.stderr.splitlines()


def test_the_build_secret_is_in_no_layer(built):
    """The CA given as a build secret (the host's with image_build.MARKER_CA) is in no layer of
    the image but in the code's copy of tests/image_build.py, which holds it as text."""
    marker = image_build.MARKER_CA.splitlines()[5]
    layers = image_build.layers(IMAGE)
    assert len(layers) == len(image_build.layer_ids(IMAGE))
    found = subprocess.run(
        ["grep", "-rlF", "--", marker, *layers], capture_output=True, text=True, timeout=600
    )
    assert found.returncode in (0, 1), found.stderr  # Matches, or none; 2 is an error.
    holding = [path for path in found.stdout.splitlines() if not path.endswith(SOURCE_WITH_MARKER)]
    assert holding == []


def test_a_code_change_keeps_the_requirements_layers(built, base, tmp_path):
    """The requirements are installed in a layer below the code's: a rebuild after a change of
    code reuses every layer up to the installed TensorFlow and adds only the code's."""
    context = tmp_path / "context"
    shutil.copytree(
        REPOSITORY,
        context,
        ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*_cache"),
    )
    with open(context / "trainer" / "train.py", "a") as changed:
        changed.write("# A change of code.\n")
    changed_image = f"{IMAGE}-code-change"
    try:
        image_build.make_image(changed_image, base, directory=context)
        layers = image_build.layers(IMAGE)[::-1]  # Base first, as layer_ids lists them.
        tensorflow = [
            index
            for index, layer in enumerate(layers)
            if pathlib.Path(layer, "opt/venv/lib/python3.11/site-packages/tensorflow").is_dir()
        ]
        assert tensorflow, layers
        kept = tensorflow[-1] + 1
        before, after = image_build.layer_ids(IMAGE), image_build.layer_ids(changed_image)
        assert after[:kept] == before[:kept]
        assert after[kept:] != before[kept:]
    finally:
        image_build.remove_image(changed_image)


def test_make_image_without_docker_or_podman_says_so_in_one_line(tmp_path):
    # A PATH with what make's own lines run (id), and neither docker nor podman.
    (tmp_path / "id").symlink_to(shutil.which("id"))
    made = subprocess.run(
        [shutil.which("make"), "--no-print-directory", "-C", REPOSITORY, "image"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 2
    assert made.stdout == ""
    ours, makes = made.stderr.splitlines()
    assert ours == "make image: neither docker nor podman is installed"
    assert makes.startswith("make: *** [Makefile:")


def test_git_commit_outside_a_repository_is_the_images(monkeypatch, tmp_path):
    monkeypatch.setattr(files, "REPOSITORY", tmp_path)
    monkeypatch.setenv(files.GIT_COMMIT_VARIABLE, "0123abc")
    assert files.git_commit() == "0123abc"
    monkeypatch.delenv(files.GIT_COMMIT_VARIABLE)
    assert files.git_commit() == "unknown"
