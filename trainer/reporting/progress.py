"""The per-epoch progress line: steps, examples/s, loss, accuracy and time left.

In a terminal the line is redrawn in place as steps complete; in a log file or CI, where
carriage returns would pile up, only the finished line of each epoch is printed.
"""

import sys
import time


class Progress:
    def __init__(
        self,
        first_step: int,
        total_steps: int,
        steps_per_epoch: int,
        enabled: bool = True,
        stream=None,
    ):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self._first_step, self._start = first_step, time.perf_counter()
        self._last_draw = 0.0

    def _eta(self, step: int) -> str:
        done = step - self._first_step
        if done <= 0:
            return "?"
        seconds = (time.perf_counter() - self._start) / done * (self.total_steps - step)
        minutes, seconds = divmod(int(seconds), 60)
        return f"{minutes}:{seconds:02d}"

    def _line(self, step: int, train: dict, examples_per_sec: float) -> str:
        epoch = -(-step // self.steps_per_epoch)
        in_epoch = step - (epoch - 1) * self.steps_per_epoch
        return (
            f"epoch {epoch}/{self.total_steps // self.steps_per_epoch}  "
            f"step {in_epoch}/{self.steps_per_epoch}  {examples_per_sec:,.0f} ex/s  "
            f"loss {train['loss']:.4f}  acc {train['accuracy']:.4f}  ETA {self._eta(step)}"
        )

    def update(self, step: int, train: dict, examples_per_sec: float) -> None:
        """Redraws the line in a terminal (at most 10 times a second); silent elsewhere."""
        now = time.perf_counter()
        if self.enabled and self.tty and now - self._last_draw > 0.1:
            self.stream.write("\r\033[K" + self._line(step, train, examples_per_sec))
            self.stream.flush()
            self._last_draw = now

    def end_epoch(self, step: int, train: dict, examples_per_sec: float, validation: dict) -> None:
        if not self.enabled:
            return
        line = (
            self._line(step, train, examples_per_sec)
            + f"  val_loss {validation['loss']:.4f}  val_acc {validation['accuracy']:.4f}"
        )
        self.stream.write(("\r\033[K" if self.tty else "") + line + "\n")
        self.stream.flush()
