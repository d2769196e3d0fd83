"""The outer loop: compiled runs of train steps, and between them the periodic actions.

The loop knows nothing of what the actions do (log, evaluate, checkpoint, profile); it only
keeps one cadence rule for all of them: a compiled run of steps ends at the first step where any
action is due (or after `steps_per_loop` steps, or at the end of training), and after it runs
exactly the actions due at that step, in the order given. Adding a periodic thing adds an
action, not a branch here. (Orbit's `Controller` and CLU's `periodic_actions` are the models.)
"""

from collections.abc import Callable, Sequence


class Action:
    """Something done between compiled runs of steps.

    `every` is the action's period in steps: it runs at each of its multiples. An action with
    `every_run` runs after every compiled run instead, wherever it ends (the run's
    measurements: scalars, the progress line). A subclass with another cadence overrides
    `next_due`.
    """

    every: int | None = None
    every_run: bool = False

    def next_due(self, step: int) -> int | None:
        """The first step after `step` at which this action must run; None: none."""
        if not self.every:
            return None
        return (step // self.every + 1) * self.every

    def __call__(self, step: int, logs: dict) -> None:
        """Runs at `step`. `logs` holds the last run's measurements under "train"; an action may
        add what it measured for the actions after it (evaluation adds "validation")."""

    def begin(self, step: int) -> None:
        """Before the first run, at the step training starts (or resumes) from."""

    def end(self, step: int) -> None:
        """After the last run, and when the loop stops on an error."""


class Controller:
    """Runs `train(step, num_steps)` in compiled runs from a start step to `total_steps`.

    `train` returns the run's measurements, or raises an exception of `recoverable`'s type,
    whereupon `recover(error)` returns the step to go on from (after restoring a checkpoint) or
    raises. `stop_requested()` is checked between runs (SIGTERM).
    """

    def __init__(
        self,
        train: Callable[[int, int], dict],
        actions: Sequence[Action],
        total_steps: int,
        steps_per_loop: int,
        stop_requested: Callable[[], bool] = lambda: False,
        recoverable: tuple[type[Exception], ...] = (),
        recover: Callable[[Exception], int] | None = None,
    ):
        if steps_per_loop < 1:
            raise ValueError(f"steps_per_loop must be at least 1, got {steps_per_loop}")
        self.train, self.actions = train, list(actions)
        self.total_steps, self.steps_per_loop = total_steps, steps_per_loop
        self.stop_requested = stop_requested
        self.recoverable, self.recover = recoverable, recover

    def run_end(self, step: int) -> int:
        """The cadence rule: where a compiled run starting at `step` ends."""
        due = [self.total_steps, step + self.steps_per_loop]
        due += [d for d in (action.next_due(step) for action in self.actions) if d is not None]
        return min(due)

    def run(self, step: int) -> int:
        """Trains from `step` until the end or a stop request; returns the step reached."""
        for action in self.actions:
            action.begin(step)
        try:
            while step < self.total_steps and not self.stop_requested():
                end = self.run_end(step)
                try:
                    logs = {"train": self.train(step, end - step)}
                except self.recoverable as error:
                    step = self.recover(error)
                    continue
                for action in self.actions:
                    if action.every_run or action.next_due(step) == end:
                        action(end, logs)
                step = end
        finally:
            for action in self.actions:
                action.end(step)
        return step
