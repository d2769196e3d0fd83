"""Stopping the processes a program started: asked to stop first, killed once a deadline passes."""

import signal
import subprocess
import time


def stop(processes: list[subprocess.Popen], deadline: float) -> None:
    """SIGTERM to each of `processes` still running (a trainer checkpoints and exits, a server
    shuts down), then SIGKILL for what is left at `deadline` (time.monotonic()); all reaped."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
