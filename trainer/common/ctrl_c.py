"""Ctrl-C as a person at a terminal expects it: an answer at once, and an end within seconds,
even while TensorFlow runs a long compiled call.

Python runs its signal handlers, and raises KeyboardInterrupt, only between bytecodes: not
while a `tf.function` of many steps, or the convergence suite's one `tf.while_loop`, is
running. The signal module's wakeup fd, written by its C handler as each signal arrives, is
read here by a thread of its own, which answers each Ctrl-C there and then.
"""

import os
import signal
import threading

from trainer.common import terminal
from trainer.common.exit_codes import INTERRUPTED_EXIT_CODE


class CtrlCCounter:
    """Within `with` (in the main thread), the Ctrl-C numbered `ends_at` ends the process at
    once with exit code 130, its line first; each earlier one is answered with `answers[i]`
    (what will happen) while the program's own handler acts on it when it can."""

    def __init__(
        self, ends_at: int = 1, answers: tuple[str, ...] = (), last_line: str | None = None
    ):
        self.ends_at, self.answers = ends_at, answers
        self.last_line = last_line
        # Ending at the first, this is the only answer: Python's own handler must not also
        # raise KeyboardInterrupt, whose traceback would race this thread's line and exit.
        self._sole_handler = ends_at == 1

    def _count(self) -> None:
        seen = 0
        while signums := os.read(self._read, 64):  # Empty once the write end is closed.
            for signum in signums:
                if signum != signal.SIGINT:
                    continue
                seen += 1
                if seen >= self.ends_at:
                    line = self.last_line or terminal.interrupted_line()
                    os.write(2, f"{line}\n".encode())
                    os._exit(INTERRUPTED_EXIT_CODE)
                os.write(2, f"{self.answers[seen - 1]}\n".encode())

    def __enter__(self):
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:  # Only the main thread may set the wakeup fd.
            self._read, self._write = os.pipe()
            os.set_blocking(self._write, False)  # The C handler must never block on it.
            self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
            if self._sole_handler:  # A Python handler still, so the wakeup fd is written.
                self._previous_handler = signal.signal(signal.SIGINT, lambda *_: None)
            self._thread = threading.Thread(target=self._count, daemon=True, name="ctrl-c")
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        if self._active:
            if self._sole_handler:
                signal.signal(signal.SIGINT, self._previous_handler)
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._write)
            self._thread.join()
            os.close(self._read)


def ends_at_once() -> CtrlCCounter:
    """For programs with nothing to save: the first Ctrl-C ends them, one line, exit 130."""
    return CtrlCCounter(ends_at=1)
