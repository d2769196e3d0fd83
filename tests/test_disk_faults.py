"""Which errors of a write are the filesystem's fault (trainer/run/disk.py), and an I/O error in
the middle of a checkpoint save: one line, what the save wrote removed, the checkpoints before it
kept. (tests/test_full_disk.py meets a full disk, a permission denied and a read-only filesystem
for real, the first two through the trainer's command line; an I/O error cannot be had for real
here.)"""

import errno
import os

import pytest
import tensorflow as tf

from trainer.common.errors import OneLineError
from trainer.run import disk
from trainer.run.checkpoints import RunCheckpoints


@pytest.mark.parametrize(
    "error, fault",
    [
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
        (tf.errors.ResourceExhaustedError(None, None, "ckpt-1; No space left on device"), 28),
        # Out of memory is ResourceExhaustedError too; it is not a full disk.
        (tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"), None),
        (OSError(errno.EACCES, "Permission denied"), errno.EACCES),
        (tf.errors.PermissionDeniedError(None, None, "run/c; Read-only file system"), errno.EROFS),
        (tf.errors.UnknownError(None, None, "run/c/ckpt-2_temp; Input/output error"), errno.EIO),
        (OSError(errno.ENOENT, "No such file or directory"), None),
        # A peer lost in the collective a save makes: the job's to handle (trainer/train.py).
        (tf.errors.UnavailableError(None, None, "/job:worker/task:1: Connection reset"), None),
    ],
)
def test_the_faults_of_the_filesystem_and_nothing_else(error, fault):
    assert disk.fault(error) == fault
    assert disk.is_full(error) == (fault in (errno.ENOSPC, errno.EDQUOT))


def test_an_io_error_while_saving_is_one_line_and_keeps_the_checkpoints_before(tmp_path):
    directory = str(tmp_path / "run" / "checkpoints")
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    checkpoints = RunCheckpoints(checkpoint, directory, max_to_keep=3)
    first = checkpoints.save(1)

    def save_until_the_disk_fails(checkpoint_number):
        # What SaveV2 has written by then, and the error TensorFlow gives errno EIO.
        os.makedirs(os.path.join(directory, f"ckpt-{checkpoint_number}_temp"))
        shard = f"ckpt-{checkpoint_number}_temp/part-00000-of-00001.data-00000-of-00001"
        open(os.path.join(directory, shard), "wb").close()
        raise tf.errors.UnknownError(
            None, None, f"{directory}/{shard}.tempstate123; Input/output error"
        )

    checkpoints.manager.save = save_until_the_disk_fails
    with pytest.raises(disk.WriteError) as error:
        checkpoints.save(2)
    assert isinstance(error.value, OneLineError) and not isinstance(error.value, disk.DiskFullError)
    assert str(error.value) == (
        f"{directory}: input/output error while saving checkpoint ckpt-2 (removed what it had "
        f"written); the last whole checkpoint is {first}: check the disk or network filesystem "
        "(the kernel's log says more) and rerun the same command to resume from it"
    )
    assert sorted(os.listdir(directory)) == [
        "checkpoint",
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
    ]
    checkpoint.v.assign(0.0)
    assert RunCheckpoints(checkpoint, directory, max_to_keep=3).restore() == first
    assert checkpoint.v.numpy() == 1.0
