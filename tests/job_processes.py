"""The processes of a job that tests and the chaos soak (tests/chaos.py) start: its output as
it comes, its workers, which of them still run, and killing what is left."""

import contextlib
import json
import re
import subprocess
import threading
import time

import psutil


class Output:
    """A process's output, read line by line as it comes by a thread of its own, so that a
    test can wait for a line the program reaches."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 120) -> bool:
        """Waits until `count` lines matching `pattern` (from their start) have come: True; or
        until the process has ended without them: False."""
        deadline = time.monotonic() + timeout
        while self.count(pattern) < count:
            if self._process.poll() is not None:  # The rest of its output, then no more.
                self._thread.join(timeout=60)
                return self.count(pattern) >= count
            assert time.monotonic() < deadline, f"no {pattern!r} in {timeout} s:\n{self.tail()}"
            time.sleep(0.05)
        return True

    def count(self, pattern: str) -> int:
        return sum(bool(re.match(pattern, line)) for line in list(self.lines))

    def text(self) -> str:
        """All of it once the process has ended; so far, before."""
        self._thread.join(timeout=0 if self._process.poll() is None else 60)
        return "".join(self.lines)

    def tail(self) -> str:
        """The end of it, for a failing assertion's message."""
        return self.text()[-3000:]


def tf_config(process: psutil.Process) -> dict | None:
    """The TF_CONFIG a process was started with, or None (none, or it has exited)."""
    try:
        return json.loads(process.environ().get("TF_CONFIG", "null"))
    except psutil.Error:
        return None


def workers_of(launcher: subprocess.Popen) -> dict[int, psutil.Process]:
    """{index: process} of the workers a launch.local process has started, by the task their
    TF_CONFIG names (the job's own process sits between, in its network namespace)."""
    return {
        config["task"]["index"]: process
        for process in running(psutil.Process(launcher.pid).children(recursive=True))
        if (config := tf_config(process))
    }


def running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running; a zombie (exited, not yet reaped) holds neither CPU nor files."""
    alive = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def kill_tree(launcher: subprocess.Popen) -> None:
    """SIGKILL to a launcher still running and to every process under it."""
    if launcher.poll() is None:
        for process in psutil.Process(launcher.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        launcher.kill()
    launcher.wait()
