"""A full disk, met by each writer of a run in turn, and a directory this user may not write to
and a read-only filesystem: one line, nothing half-written, a rerun resumes from the checkpoint
the line names.

One run trains through the real command line on a tmpfs given a little more space at each
attempt, as a user who frees some and reruns would. Each attempt fills it at the next writer
(flags.txt, the events, a checkpoint, the export, result.json), at a write the run reaches
whatever the machine's speed: its free space lies between what the run writes before that
write and what it needs for that write too. One attempt meets another fault instead: the
checkpoint directory not writable by the trainer's user (not root: a user namespace makes it
the files' owner, without root's power over permissions). The tmpfs is mounted in a mount
namespace of its own (CI runs as root), held by a process that ends with the test, or with
pytest if it is killed: nothing stays mounted.

Each writer then meets the tmpfs mounted read-only, in this process, which reaches it through
the holder's mounts.
"""

import contextlib
import dataclasses
import json
import os
import re
import subprocess

import pytest
import tensorflow as tf

from data.mnist import NUM_CLASSES, NUM_PIXELS
from models.mlp import MLP
from tests.toolkit import command_line, run_module, summaries
from trainer.config import TrainConfig
from trainer.recipe import CHECKPOINT_DIR, EXPORT_DIR
from trainer.reporting.tensorboard import MetricsWriter
from trainer.run import disk, lock
from trainer.run.checkpoints import RunCheckpoints
from trainer.run.export import export
from trainer.run.files import RESULT_FILE, write_flags

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 100 steps an epoch on one device; without XLA on every machine, since the sizes below are of
# the train loop's graph as it is then (with XLA the graph is another, smaller one).
TINY = TrainConfig(
    hidden_sizes=(32,),
    batch_size=500,
    epochs=2,
    data_source="bundled",
    run_name="run",
    jit_compile="false",
)
ROOMY_KIB = 8192
PAGE_KIB = 4  # tmpfs allocates whole pages.
# The trainer as a user who owns the files but is not root: permissions bind it.
NOT_ROOT = ("unshare", "--map-user=1000", "--map-group=1000")


class SmallDisk:
    """A tmpfs of `kib` KiB at `directory`, seen only by the programs run through it."""

    def __init__(self, directory, kib: int):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        # The namespace lives as long as this `cat`, which ends when its stdin closes.
        self._holder = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount -t tmpfs -o size="$1"k tmpfs "$2" && echo mounted && exec cat >/dev/null',
                "sh",
                str(kib),
                self.directory,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self._holder.stdout.readline() != "mounted\n":
            self.close()
            pytest.fail(f"could not mount a tmpfs at {self.directory}")
        self._enter = ("nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt", "--")

    def path(self, *parts: str) -> str:
        """A path on the disk as this process reaches it: through the holder's mounts."""
        return os.path.join(f"/proc/{self._holder.pid}/root", self.directory.lstrip("/"), *parts)

    def resize(self, kib: int) -> None:
        subprocess.run(
            [*self._enter, "mount", "-o", f"remount,size={kib}k", self.directory], check=True
        )

    def used_kib(self) -> int:
        stats = os.statvfs(self.path())
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize // 1024

    def train(
        self, config: TrainConfig, as_user: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess:
        config = dataclasses.replace(config, logdir=self.directory)
        return run_module("trainer.train", *command_line(config), wrapper=self._enter + as_user)

    @contextlib.contextmanager
    def read_only(self, *parts: str):
        """The directory at `parts` mounted read-only (bound onto itself) for the block."""
        directory = os.path.join(self.directory, *parts)
        os.makedirs(self.path(*parts), exist_ok=True)
        subprocess.run(
            [*self._enter, "mount", "--bind", "-o", "ro", directory, directory], check=True
        )
        try:
            yield
        finally:
            subprocess.run([*self._enter, "umount", directory], check=True)

    @contextlib.contextmanager
    def not_writable(self, *parts: str):
        """The directory at `parts` without write permission for the block."""
        os.chmod(self.path(*parts), 0o555)
        try:
            yield
        finally:
            os.chmod(self.path(*parts), 0o755)

    def close(self) -> None:
        self._holder.stdin.close()
        self._holder.wait(timeout=30)


def export_kib(tmp_path) -> int:
    """What the run's export takes on a tmpfs, which gives each file whole pages: measured on
    an export of the same model."""
    directory = export(MLP(NUM_PIXELS, TINY.hidden_sizes, NUM_CLASSES), tmp_path / "export")
    return sum(
        -(-os.path.getsize(os.path.join(parent, name)) // (PAGE_KIB * 1024)) * PAGE_KIB
        for parent, _, files in os.walk(directory)
        for name in files
    )


FULL = ("no space left on device", "free some space")
NOT_WRITABLE = ("permission denied", "let this user write to {}")


@dataclasses.dataclass
class Attempt:
    free_kib: int | None  # Free on the disk as it starts; None: a page and the export.
    directory: str  # In the run directory: where its line says the write failed.
    writing: str
    last_checkpoint: int | None  # The step its line says a rerun resumes from.
    fault: tuple[str, str] = FULL  # What its line says happened, and what to do.


# One run, each attempt resuming where the one before stopped, on a disk given a little more
# space each time: each fills it at another writer. What each attempt writes before that
# writer and with it, as measured here: the events of the first 100 steps take 340 KiB (the
# train loop's graph 281 KiB of them), of 100 more 45 KiB; a checkpoint 312 KiB (with its
# index and the state file); the export 132 KiB.
ATTEMPTS = [
    # Nothing: not flags.txt (data.json and result.json are written as it is).
    Attempt(0, "", "writing flags.txt", None),
    # flags.txt, data.json, the events' first page, run.lock: 16 KiB; not the graph as well.
    Attempt(120, "", "writing TensorBoard events", None),
    # Events and ckpt-100: 700 KiB; not ckpt-200 as well: 1,010 KiB.
    Attempt(830, CHECKPOINT_DIR, "saving checkpoint ckpt-200", 100),
    # Room enough, but the checkpoint directory is not the trainer's user's to write.
    Attempt(ROOMY_KIB, CHECKPOINT_DIR, "saving checkpoint ckpt-200", 100, NOT_WRITABLE),
    # Another events file (the graph again) and ckpt-200: 640 KiB; not the export too: 772.
    Attempt(705, EXPORT_DIR, "exporting the SavedModel 200", 200),
    # The events of a rerun that trains nothing (a page) and the export; not result.json.
    Attempt(None, "", "writing result.json", 200),
]


def expected_line(run_dir: str, attempt: Attempt) -> str:
    where = os.path.normpath(os.path.join(run_dir, attempt.directory))
    happened, remedy = attempt.fault
    remedy = remedy.format(where)
    if attempt.last_checkpoint is None:
        then = f"no checkpoint was saved yet: {remedy} and rerun the same command to start the run"
    else:
        then = (
            f"the last whole checkpoint is {run_dir}/{CHECKPOINT_DIR}/"
            f"ckpt-{attempt.last_checkpoint}: {remedy} and rerun the same command to resume from it"
        )
    return (
        f"trainer.train: error: {where}: {happened} while {attempt.writing} "
        f"(removed what it had written); {then}"
    )


def meeting(small: SmallDisk, attempt: Attempt):
    """The fault the attempt meets, set up for the block, and the wrapper to train under."""
    if attempt.fault == NOT_WRITABLE:
        return small.not_writable(TINY.run_name, attempt.directory), NOT_ROOT
    return contextlib.nullcontext(), ()


def assert_nothing_half_written(run_dir: str) -> None:
    """No temporary or partial file; every events file reads to its end; every checkpoint is
    listed and reads back."""
    for parent, directories, files in os.walk(run_dir):
        for name in directories + files:
            assert not re.search(r"_temp$|\.partial$|\.tmp", name), os.path.join(parent, name)
    summaries(run_dir)  # DataLossError on part of an event.
    checkpoints = os.path.join(run_dir, CHECKPOINT_DIR)
    if os.path.isdir(checkpoints):
        listed = tf.train.get_checkpoint_state(checkpoints).all_model_checkpoint_paths
        listed = {os.path.basename(path) for path in listed}
        assert {name.split(".")[0] for name in os.listdir(checkpoints) if "ckpt-" in name} == listed
        for name in listed:
            tf.train.load_checkpoint(os.path.join(checkpoints, name))


def resumed_from(output: str) -> int | None:
    resumed = re.search(r"resumed from \S+ at step (\d+)", output)
    return int(resumed.group(1)) if resumed else None


def test_a_full_disk_at_each_writer_and_a_permission_denied_are_one_line_and_the_rerun_resumes(
    tmp_path,
):
    small = SmallDisk(tmp_path / "disk", PAGE_KIB)
    try:
        with open(small.path("filler"), "wb") as f:  # Full from the start.
            f.write(bytes(PAGE_KIB * 1024))
        run_dir = os.path.join(small.directory, TINY.run_name)
        a_page_and_the_export = PAGE_KIB + export_kib(tmp_path)
        resumes_from = None
        for attempt in ATTEMPTS:
            free = attempt.free_kib
            small.resize(small.used_kib() + (a_page_and_the_export if free is None else free))
            fault, as_user = meeting(small, attempt)
            with fault:
                failed = small.train(TINY, as_user)
            assert failed.returncode == 1, failed.stderr[-3000:]
            assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
            assert failed.stderr.splitlines()[-1] == expected_line(run_dir, attempt)
            assert resumed_from(failed.stderr) == resumes_from  # The line before named it.
            assert_nothing_half_written(small.path(TINY.run_name))
            resumes_from = attempt.last_checkpoint

        small.resize(ROOMY_KIB)
        finished = small.train(TINY)
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert resumed_from(finished.stderr) == resumes_from
        with open(small.path(TINY.run_name, RESULT_FILE)) as f:
            assert json.load(f)["steps"] == 200
        assert_nothing_half_written(small.path(TINY.run_name))
    finally:
        small.close()


# Each writer of a run, in a run directory that holds ckpt-1: (what it is writing, the directory
# its line names, relative to the run's, and a write).
WRITERS = {
    "checkpoint": (
        "saving checkpoint ckpt-2",
        CHECKPOINT_DIR,
        lambda run_dir, checkpoints: checkpoints.save(2),
    ),
    "export": (
        "exporting the SavedModel 2",
        EXPORT_DIR,
        lambda run_dir, _: export(
            MLP(NUM_PIXELS, TINY.hidden_sizes, NUM_CLASSES), os.path.join(run_dir, EXPORT_DIR, "2")
        ),
    ),
    "events": ("starting a TensorBoard events file", "", lambda run_dir, _: MetricsWriter(run_dir)),
    "flags.txt": ("writing flags.txt", "", lambda run_dir, _: write_flags(run_dir, "")),
    "run.lock": ("creating run.lock", "", lambda run_dir, _: lock.hold(run_dir).__enter__()),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_each_writer_on_a_read_only_filesystem_is_one_line_naming_the_last_checkpoint(
    tmp_path, writer
):
    what, directory, write = WRITERS[writer]
    small = SmallDisk(tmp_path / "disk", ROOMY_KIB)
    try:
        run_dir = small.path(TINY.run_name)
        checkpoint_dir = os.path.join(run_dir, CHECKPOINT_DIR)
        checkpoints = RunCheckpoints(tf.train.Checkpoint(v=tf.Variable(1.0)), checkpoint_dir, 3)
        checkpoints.save(1)
        before = sorted(os.listdir(checkpoint_dir))
        with small.read_only(TINY.run_name), pytest.raises(disk.WriteError) as error:
            write(run_dir, checkpoints)
        assert str(error.value) == (
            f"{os.path.normpath(os.path.join(run_dir, directory))}: read-only file system while "
            f"{what} (removed what it had written); the last whole checkpoint is "
            f"{checkpoint_dir}/ckpt-1: make the filesystem writable and rerun the same command to "
            "resume from it"
        )
        assert sorted(os.listdir(checkpoint_dir)) == before
    finally:
        small.close()
