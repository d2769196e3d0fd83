"""What a suite run is: its settings, and the logdir check that keeps one logdir to one of them.

Plain data and files, apart from the suite and TensorFlow: `python -m trainer.convergence`
refuses a bad flag or a logdir holding other settings before it loads TensorFlow.
"""

import dataclasses
import json
import os

from trainer.common.errors import OneLineError

# The notebook's optimizers, whose rows are the notebook's published table, and which `make
# bench` times against the notebook's own loop (notebook.py has only these).
NOTEBOOK_OPTIMIZERS = ("gd", "momentum", "adam")

# The default: the notebook's and two it does not have. Muon is not among them:
# on a 0-D or 1-D variable it takes its AdamW path, so on x it is AdamW (with Keras's epsilon).
DEFAULT_OPTIMIZERS = (*NOTEBOOK_OPTIMIZERS, "adamw", "lion")

# The file in a logdir that records which settings its events and pictures belong to.
SETTINGS_FILE = "settings.json"


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
    """What the suite runs; by default the notebook's table and the AdamW and Lion rows."""

    optimizers: tuple[str, ...] = DEFAULT_OPTIMIZERS
    learning_rates: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    init_val: float = 2.0
    max_iters: int = 2000


class LogdirError(OneLineError):
    """The logdir holds another suite run's output, which this run would replace."""


def check_logdir(logdir: str, settings: SuiteSettings) -> None:
    """Refuses a logdir whose pictures came from other settings: a rerun would replace them.

    Event files are never replaced (each run adds its own), so rerunning the same settings
    into a logdir only appends, and rewrites pictures that come out the same.
    """
    recorded = os.path.join(logdir, SETTINGS_FILE)
    if not os.path.exists(recorded):
        return
    with open(recorded) as f:
        previous = json.load(f)
    current = json.loads(json.dumps(dataclasses.asdict(settings)))
    if previous != current:
        raise LogdirError(
            f"--logdir={logdir}: holds a suite run with other settings "
            f"({json.dumps(previous)}); choose another --logdir or remove it"
        )
