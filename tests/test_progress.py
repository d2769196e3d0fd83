"""The progress line: in place in a terminal, one clean line per epoch elsewhere."""

import io

from trainer.reporting.progress import Progress

TRAIN = {"loss": 0.25, "accuracy": 0.9}
VALIDATION = {"loss": 0.3, "accuracy": 0.875}


class Terminal(io.StringIO):
    def isatty(self):
        return True


def run(stream, enabled=True):
    progress = Progress(
        first_step=0, total_steps=20, steps_per_epoch=10, enabled=enabled, stream=stream
    )
    for step in range(2, 21, 2):
        progress._last_draw = 0.0  # Draw every update, as if time had passed.
        progress.update(step, TRAIN, 12_345.0)
        if step % 10 == 0:
            progress.end_epoch(step, TRAIN, 12_345.0, VALIDATION)
    return stream.getvalue()


def test_a_log_file_gets_one_line_per_epoch_and_no_carriage_returns():
    lines = run(io.StringIO()).splitlines()
    assert len(lines) == 2 and "\r" not in "".join(lines)
    assert lines[0].startswith("epoch 1/2  step 10/10  12,345 ex/s  loss 0.2500  acc 0.9000")
    assert lines[0].endswith("val_loss 0.3000  val_acc 0.8750")
    assert "ETA" in lines[0] and lines[1].startswith("epoch 2/2  step 10/10")


def test_a_terminal_sees_the_line_redrawn_in_place():
    shown = run(Terminal())
    assert shown.count("\r") > 2 and shown.count("\n") == 2
    assert "epoch 1/2  step 4/10" in shown


def test_workers_other_than_the_chief_print_nothing():
    assert run(io.StringIO(), enabled=False) == ""
