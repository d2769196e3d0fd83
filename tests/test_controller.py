"""The outer loop's one cadence rule, on a fake train function: where runs end, what runs when."""

import pytest

from trainer.loop import actions
from trainer.loop.controller import Action, Controller


class Recorder(Action):
    """Records the steps it ran at; `every` as given, or after every run."""

    def __init__(self, every=None, every_run=False):
        self.every, self.every_run, self.steps = every, every_run, []

    def __call__(self, step, logs):
        self.steps.append(step)


def runs_of(controller: Controller, start: int = 0) -> list[tuple[int, int]]:
    """(first step, steps) of each compiled run the controller asks for."""
    runs = []

    def train(step, num_steps):
        runs.append((step, num_steps))
        return {}

    controller.train = train
    controller.run(start)
    return runs


def test_runs_end_where_any_action_is_due_and_only_due_actions_run():
    every_7, every_10, each_run = Recorder(every=7), Recorder(every=10), Recorder(every_run=True)
    controller = Controller(None, [every_7, every_10, each_run], total_steps=30, steps_per_loop=100)
    runs = runs_of(controller)
    ends = [start + n for start, n in runs]
    assert ends == [7, 10, 14, 20, 21, 28, 30]
    assert every_7.steps == [7, 14, 21, 28]
    assert every_10.steps == [10, 20, 30]
    assert each_run.steps == ends


def test_steps_per_loop_caps_a_run_and_a_resumed_run_keeps_the_cadence():
    every_10 = Recorder(every=10)
    controller = Controller(None, [every_10], total_steps=40, steps_per_loop=4)
    assert runs_of(controller, start=13) == [
        (13, 4),
        (17, 3),
        (20, 4),
        (24, 4),
        (28, 2),
        (30, 4),
        (34, 4),
        (38, 2),
    ]
    assert every_10.steps == [20, 30, 40]  # Not 13: what was due there ran before the stop.


def test_the_profile_window_is_exactly_the_steps_asked_for(monkeypatch):
    calls = []
    monkeypatch.setattr(
        actions.tf.profiler.experimental,
        "start",
        lambda logdir: calls.append(("start", steps_done[-1])),
    )
    monkeypatch.setattr(
        actions.tf.profiler.experimental, "stop", lambda: calls.append(("stop", steps_done[-1]))
    )
    steps_done = [0]

    def train(step, num_steps):
        steps_done.append(step + num_steps)
        return {}

    Controller(train, [actions.Profile("logdir", 10, 20)], total_steps=50, steps_per_loop=100).run(
        0
    )
    assert calls == [("start", 10), ("stop", 20)]
    assert steps_done == [0, 10, 20, 50]


def test_a_profile_window_from_the_first_step_starts_before_the_first_run(monkeypatch):
    calls = []
    monkeypatch.setattr(
        actions.tf.profiler.experimental, "start", lambda logdir: calls.append("start")
    )
    monkeypatch.setattr(actions.tf.profiler.experimental, "stop", lambda: calls.append("stop"))
    Controller(
        lambda step, n: calls.append(f"train {step}+{n}") or {},
        [actions.Profile("logdir", 0, 5)],
        total_steps=8,
        steps_per_loop=100,
    ).run(0)
    assert calls == ["start", "train 0+5", "stop", "train 5+3"]


def test_checkpoints_come_at_every_multiple_of_each_period():
    saved = []

    class Checkpoints:
        def save(self, step):
            saved.append(step)
            return f"ckpt-{step}"

    class Writer:
        def flush(self):
            pass

    controller = Controller(
        None,
        [actions.SaveCheckpoint([10, 0, 4], Checkpoints(), Writer())],
        total_steps=20,
        steps_per_loop=100,
    )
    runs_of(controller)
    assert saved == [4, 8, 10, 12, 16, 20]


class Diverged(Exception):
    pass


def test_a_recoverable_error_goes_back_to_the_step_recover_returns():
    attempts = []

    def train(step, num_steps):
        attempts.append(step)
        if step == 10 and attempts.count(10) == 1:
            raise Diverged()
        return {}

    every_5 = Recorder(every=5)
    reached = Controller(
        train,
        [every_5],
        total_steps=20,
        steps_per_loop=100,
        recoverable=(Diverged,),
        recover=lambda error: 5,
    ).run(0)
    assert reached == 20
    assert attempts == [0, 5, 10, 5, 10, 15]
    assert every_5.steps == [5, 10, 10, 15, 20]  # Steps 5-10 ran twice: so did their action.


def test_a_stop_request_ends_the_loop_between_runs_and_end_always_runs():
    ended = []

    class Ends(Recorder):
        def end(self, step):
            ended.append(step)

    stop = []
    action = Ends(every=3)
    reached = Controller(
        lambda step, n: stop.append(step) or {},
        [action],
        total_steps=30,
        steps_per_loop=100,
        stop_requested=lambda: len(stop) == 2,
    ).run(0)
    assert reached == 6 and ended == [6]

    def fails(step, n):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        Controller(fails, [action], total_steps=30, steps_per_loop=100).run(9)
    assert ended == [6, 9]
