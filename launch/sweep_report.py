"""A sweep's outcome as a table, whichever engine ran it: each run's status and test accuracy,
and with --seeds each point's mean and spread over its seeds.

No TensorFlow here.
"""

import dataclasses
import datetime
import os
import re
import shlex
import statistics

from launch.sweep_plan import Sweep, SweepRun
from trainer.common.exit_codes import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from trainer.common.tables import markdown_table
from trainer.common.terminal import tensorboard_command

# Each run's trainer output, appended to on every attempt so a rerun never loses the last one.
LOG_FILE = "train.log"
# The HParams summaries live in event files of their own, told apart by these suffixes.
EXPERIMENT_SUFFIX = ".sweep_experiment"
SESSION_SUFFIX = ".sweep_session"
# How each attempt's output is headed in train.log: `# <time> launch.sweep: <command>`.
ATTEMPT_HEADER = re.compile(r"^# \S+ launch\.sweep: .*$", re.MULTILINE)
FINISHED, SKIPPED, FAILED, PREEMPTED, INTERRUPTED, NOT_STARTED = (
    "finished",
    "skipped (finished before)",
    "failed",
    "preempted",
    "interrupted",
    "not started",
)


@dataclasses.dataclass(frozen=True)
class RunReport:
    run: SweepRun
    status: str
    test_accuracy: float | None = None
    message: str = ""  # The trainer's last line, when the run did not finish.
    # The trainer's; for a run not started, that of the signal that stopped the sweep.
    exit_code: int = 0


def attempt_header(command: list[str]) -> str:
    """The line that heads an attempt's output in its run's train.log (ATTEMPT_HEADER)."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    return f"\n# {now} launch.sweep: {shlex.join(command)}\n"


def reason(lines: list[str]) -> str:
    """Why a trainer stopped, from its output: its one-line error, or absl's flag error (which
    absl follows with a pointer to --helpfull), else its last line."""
    for line in reversed(lines):
        if line.startswith(("trainer.train: error: ", "FATAL Flags parsing error: ")):
            return line
    return lines[-1] if lines else "no output"


def exit_code(reports: list[RunReport]) -> int:
    """130 if Ctrl-C stopped the sweep, as it does launch.local and the trainer; else 1 if any
    run failed; else 143 if SIGTERM stopped it (preempted: rerun to resume); else 0."""
    codes = {report.exit_code for report in reports}
    if INTERRUPTED_EXIT_CODE in codes:
        return INTERRUPTED_EXIT_CODE
    if any(report.status.startswith(FAILED) for report in reports):
        return 1
    return PREEMPTED_EXIT_CODE if PREEMPTED_EXIT_CODE in codes else 0


def format_table(sweep: Sweep, reports: list[RunReport]) -> str:
    """One row a run: its values, test accuracy and status; with --seeds, one row a point: the
    mean and spread of its finished seeds; then where to look next."""
    rows = [
        [
            *_labels(report.run),
            *([str(report.run.seed)] if sweep.seeds else []),
            "-" if report.test_accuracy is None else f"{report.test_accuracy:.4f}",
            f"{report.status}: {report.message}" if report.message else report.status,
        ]
        for report in reports
    ]
    tables = [markdown_table([*sweep.columns, "test accuracy", "status"], rows)]
    if sweep.seeds:
        tables.append(_over_seeds(sweep, reports))
    logs = [
        f"log of {report.run.name}: {os.path.join(sweep.run_dir(report.run), LOG_FILE)}"
        for report in reports
        if report.message
    ]
    return "\n".join(
        [*tables, *logs, "TensorBoard (HParams tab): " + tensorboard_command(sweep.sweep_dir)]
    )


def _labels(run: SweepRun) -> list[str]:
    """The run's point: its trial, if a search's, and its values."""
    trial = [] if run.trial is None else [str(run.trial)]
    return trial + [value.label for value in run.values.values()]


def _over_seeds(sweep: Sweep, reports: list[RunReport]) -> str:
    """Each point's test accuracy over its seeds: mean, and spread (the sample standard
    deviation), of those finished."""
    points: dict[str, list[RunReport]] = {}
    for report in reports:
        points.setdefault(report.run.point, []).append(report)
    rows = []
    for repeats in points.values():
        scores = [r.test_accuracy for r in repeats if r.test_accuracy is not None]
        rows.append(
            [
                *_labels(repeats[0].run),
                f"{statistics.mean(scores):.4f}" if scores else "-",
                f"{statistics.stdev(scores):.4f}" if len(scores) > 1 else "-",
                f"{len(scores)} of {len(repeats)}",
            ]
        )
    columns = [c for c in sweep.columns if c != "seed"]
    return markdown_table([*columns, "mean test accuracy", "spread", "seeds finished"], rows)
