"""The compiled convergence suite: the notebook's table, its exact paths, one trace, the outputs."""

import dataclasses
import glob
import json

import numpy as np
import pytest

from tests.toolkit import run_module, summaries
from trainer.bench import convergence as bench_convergence
from trainer.convergence import notebook
from trainer.convergence.suite import (
    CONVERGED,
    EXCEEDED,
    EXPLODED,
    ConvergenceSuite,
    LogdirError,
    SuiteSettings,
    format_table,
    run_and_report,
)

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

OPTIMIZERS = ("gd", "momentum", "adam")

# The notebook's published table: (outcome, iteration) per (optimizer, learning rate).
PUBLISHED = {
    ("gd", 1e-3): (EXCEEDED, 2000),
    ("gd", 1e-2): (EXCEEDED, 2000),
    ("gd", 1e-1): (EXPLODED, 6),
    ("momentum", 1e-3): (EXCEEDED, 2000),
    ("momentum", 1e-2): (CONVERGED, 80),
    ("momentum", 1e-1): (EXPLODED, 6),
    ("adam", 1e-3): (EXCEEDED, 2000),
    ("adam", 1e-2): (EXCEEDED, 2000),
    ("adam", 1e-1): (CONVERGED, 1156),
}


def test_reproduces_the_published_table():
    results = ConvergenceSuite(OPTIMIZERS, (1e-3, 1e-2, 1e-1))(init_val=2.0, max_iters=2000)
    assert {key: (r.outcome, r.iteration) for key, r in results.items()} == PUBLISHED
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in format_table(results).splitlines()
    ]
    assert rows[0] == ["optimizer", "lr 0.001", "lr 0.01", "lr 0.1"]
    assert rows[2:] == [
        ["gradient descent", "exceeded 2000", "exceeded 2000", "exploded at iteration 6"],
        ["momentum", "exceeded 2000", "converged in 80 iterations", "exploded at iteration 6"],
        ["Adam", "exceeded 2000", "exceeded 2000", "converged in 1156 iterations"],
    ]


# Between them these give every outcome (-0.5 converges nearly everywhere, 0.3 and 1.0 explode at
# large rates), and each catches a way to get the rounding wrong: with grappler's rewrites on,
# the first three differ from the notebook; with nine runs in one vector (full SIMD packets),
# the last does.
@pytest.mark.parametrize(
    "init_val, max_iters, learning_rates",
    [
        (-0.5, 300, (1e-2, 1e-1)),
        (1.0, 200, (0.05,)),
        (0.3, 150, (3e-3, 0.02, 0.2, 0.5, 1.0)),
        (-0.5, 100, (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09)),
    ],
)
def test_matches_the_notebook_bit_for_bit(init_val, max_iters, learning_rates):
    expected = notebook.run_suite(OPTIMIZERS, learning_rates, init_val, max_iters)
    results = ConvergenceSuite(OPTIMIZERS, learning_rates)(init_val, max_iters)
    assert list(results) == list(expected)
    for key, result in results.items():
        assert (result.outcome, result.iteration, result.final) == (
            expected[key].outcome,
            expected[key].iteration,
            expected[key].final,
        ), key
        np.testing.assert_array_equal(result.path, expected[key].path, err_msg=str(key))


def test_traces_once_and_every_call_starts_afresh():
    suite = ConvergenceSuite(["momentum", "adam"], (1e-2, 1e-1))
    first = suite(2.0, 300)
    suite(-0.5, 50)
    suite(1.0, 20)
    again = suite(2.0, 300)
    assert suite.trace_count == 1
    for key, result in first.items():
        assert (again[key].outcome, again[key].iteration) == (result.outcome, result.iteration)
        np.testing.assert_array_equal(again[key].path, result.path)


def test_entry_point_writes_json_pictures_and_events(tmp_path):
    logdir, json_path = tmp_path / "logs", tmp_path / "results.json"
    done = run_module(
        "trainer.convergence",
        f"--logdir={logdir}",
        f"--json={json_path}",
        "--max_iters=100",
        "--learning_rates=0.01,0.1",
    )
    assert done.returncode == 0, done.stderr
    assert "| momentum " in done.stdout and "| converged in 80 iterations |" in done.stdout

    results = json.loads(json_path.read_text())
    assert {key: (r["outcome"], r["iteration"]) for key, r in results.items()} == {
        "gd@0.01": (EXCEEDED, 100),
        "gd@0.1": (EXPLODED, 6),
        "momentum@0.01": (CONVERGED, 80),
        "momentum@0.1": (EXPLODED, 6),
        "adam@0.01": (EXCEEDED, 100),
        "adam@0.1": (EXCEEDED, 100),
    }
    assert results["gd@0.1"]["final"] is None
    assert results["momentum@0.01"]["final"] == pytest.approx(-9 / 8, abs=1e-3)

    for picture in ("loss_function", "paths_gd", "paths_momentum", "paths_adam"):
        assert (logdir / f"{picture}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    top = summaries(logdir)
    assert {tag: (summary.plugin, len(summary.steps)) for tag, summary in top.items()} == {
        "loss_function": ("images", 1),
        "paths/gd": ("images", 1),
        "paths/momentum": ("images", 1),
        "paths/adam": ("images", 1),
        "table": ("text", 1),
    }

    run = summaries(logdir / "momentum@0.01")
    assert set(run) == {"x", "loss", "outcome"}
    assert run["x"].plugin == run["loss"].plugin == "scalars"
    assert run["x"].steps == run["loss"].steps == list(range(1, 81))
    # The last x logged is the JSON's final x, to the float32 bit.
    assert run["x"].values[-1] == np.float32(results["momentum@0.01"]["final"])
    assert summaries(logdir / "gd@0.1")["x"].steps == [1, 2, 3, 4, 5]


def test_rerun_appends_events_and_refuses_other_settings(tmp_path):
    settings = SuiteSettings(optimizers=("momentum",), learning_rates=(1e-2,), max_iters=100)
    run_and_report(settings, str(tmp_path))
    picture = (tmp_path / "paths_momentum.png").read_bytes()
    run_and_report(settings, str(tmp_path))
    assert len(glob.glob(str(tmp_path / "momentum@0.01" / "events.out.tfevents.*"))) == 2
    assert (tmp_path / "paths_momentum.png").read_bytes() == picture
    with pytest.raises(LogdirError, match="--logdir"):
        run_and_report(dataclasses.replace(settings, init_val=-0.5), str(tmp_path))


def test_the_bench_section_finds_the_compiled_suite_faster_with_the_same_answers():
    # Every optimizer and learning rate of the defaults; 300 iterations rather than 2000 keep the
    # eager side to about 2 s, where the compiled suite is already some 80 times faster.
    measured = bench_convergence.run(SuiteSettings(max_iters=300), repeats=3)
    assert measured["results_match"] is True
    assert measured["compiled_seconds"] * 10 < measured["eager_seconds"]
    assert measured["speedup"] > 10
    # Even its first call, which builds the variables and traces, beats the eager loop.
    assert measured["compiled_seconds_incl_first_trace"] < measured["eager_seconds"]
    assert measured["compiled_seconds"] <= measured["compiled_seconds_incl_first_trace"]


@pytest.mark.parametrize("field", ["outcome", "iteration", "final"])
def test_the_bench_section_reports_when_the_compiled_suite_answers_differently(field, monkeypatch):
    change = {
        "outcome": lambda r: dataclasses.replace(r, outcome=EXCEEDED),
        "iteration": lambda r: dataclasses.replace(r, iteration=r.iteration - 1),
        "final": lambda r: dataclasses.replace(r, path=r.path + 1),
    }[field]

    class Different(ConvergenceSuite):
        """The suite, with one field of one run's result changed."""

        def __call__(self, *args):
            results = super().__call__(*args)
            key = next(iter(results))
            results[key] = change(results[key])
            return results

    monkeypatch.setattr(bench_convergence, "ConvergenceSuite", Different)
    # One run that converges (in 80 iterations): its outcome, iteration and final x all count.
    settings = SuiteSettings(optimizers=("momentum",), learning_rates=(1e-2,), max_iters=100)
    assert bench_convergence.run(settings, repeats=1)["results_match"] is False
