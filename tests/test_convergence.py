"""The compiled convergence suite: the notebook's table, its exact paths, one trace, the outputs."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from trainer.convergence import notebook
from trainer.bench import convergence as bench_convergence
from trainer.convergence.suite import (CONVERGED, EXCEEDED, EXPLODED, SETTINGS_FILE,
                                     ConvergenceSuite, LogdirError, SuiteSettings, format_table,
                                     run_and_report)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIMIZERS = ("gd", "momentum", "adam")

# The notebook's published table: (outcome, iteration) per (optimizer, learning rate).
PUBLISHED = {
    ("gd", 1e-3): (EXCEEDED, 2000), ("gd", 1e-2): (EXCEEDED, 2000), ("gd", 1e-1): (EXPLODED, 6),
    ("momentum", 1e-3): (EXCEEDED, 2000), ("momentum", 1e-2): (CONVERGED, 80),
    ("momentum", 1e-1): (EXPLODED, 6),
    ("adam", 1e-3): (EXCEEDED, 2000), ("adam", 1e-2): (EXCEEDED, 2000),
    ("adam", 1e-1): (CONVERGED, 1156),
}


def test_reproduces_the_published_table():
    results = ConvergenceSuite(OPTIMIZERS, (1e-3, 1e-2, 1e-1))(init_val=2.0, max_iters=2000)
    assert {key: (r.outcome, r.iteration) for key, r in results.items()} == PUBLISHED
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in format_table(results).splitlines()]
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
@pytest.mark.parametrize("init_val, max_iters, learning_rates", [
    (-0.5, 300, (1e-2, 1e-1)),
    (1.0, 200, (0.05,)),
    (0.3, 150, (3e-3, 0.02, 0.2, 0.5, 1.0)),
    (-0.5, 100, (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09)),
])
def test_matches_the_notebook_bit_for_bit(init_val, max_iters, learning_rates):
    expected = notebook.run_suite(OPTIMIZERS, learning_rates, init_val, max_iters)
    results = ConvergenceSuite(OPTIMIZERS, learning_rates)(init_val, max_iters)
    assert list(results) == list(expected)
    for key, result in results.items():
        assert (result.outcome, result.iteration, result.final) == (
            expected[key].outcome, expected[key].iteration, expected[key].final), key
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


def _events(run_dir):
    """{tag: [(step, value or None, plugin)]} from every event file in run_dir."""
    events = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                number = tf.make_ndarray(value.tensor) if plugin == "scalars" else None
                events.setdefault(value.tag, []).append((event.step, number, plugin))
    return events


def _run_entry(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "trainer.convergence", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_entry_point_writes_json_pictures_and_events(tmp_path):
    logdir, json_path = tmp_path / "logs", tmp_path / "results.json"
    process = _run_entry(f"--logdir={logdir}", f"--json={json_path}", "--max_iters=100",
                         "--learning_rates=0.01,0.1")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert "| momentum " in stdout and "| converged in 80 iterations |" in stdout

    results = json.loads(json_path.read_text())
    assert {key: (r["outcome"], r["iteration"]) for key, r in results.items()} == {
        "gd@0.01": (EXCEEDED, 100), "gd@0.1": (EXPLODED, 6),
        "momentum@0.01": (CONVERGED, 80), "momentum@0.1": (EXPLODED, 6),
        "adam@0.01": (EXCEEDED, 100), "adam@0.1": (EXCEEDED, 100)}
    assert results["gd@0.1"]["final"] is None
    assert results["momentum@0.01"]["final"] == pytest.approx(-9 / 8, abs=1e-3)

    for picture in ("loss_function", "paths_gd", "paths_momentum", "paths_adam"):
        assert (logdir / f"{picture}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    top = _events(logdir)
    assert {tag: plugin for tag, [(_, _, plugin)] in top.items()} == {
        "loss_function": "images", "paths/gd": "images", "paths/momentum": "images",
        "paths/adam": "images", "table": "text"}

    run = _events(logdir / "momentum@0.01")
    assert set(run) == {"x", "loss", "outcome"}
    assert [step for step, _, _ in run["x"]] == list(range(1, 81))
    assert [step for step, _, _ in run["loss"]] == list(range(1, 81))
    # The last x logged is the JSON's final x, to the float32 bit.
    assert run["x"][-1][1] == np.float32(results["momentum@0.01"]["final"])
    assert [step for step, _, _ in _events(logdir / "gd@0.1")["x"]] == [1, 2, 3, 4, 5]


def test_bad_flags_exit_with_one_line_naming_the_flag(tmp_path):
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    (other / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(SuiteSettings(init_val=1.0))))
    cases = [  # (arguments, the flag the message must name)
        (["--optimizers=gd,sgd"], "--optimizers"),
        (["--learning_rates=0.1,-0.1"], "--learning_rates"),
        (["--max_iters=0"], "--max_iters"),
        (["--init_val=nan"], "--init_val"),
        ([f"--json={taken}"], "--json"),
        ([f"--logdir={other}"], "--logdir"),
    ]
    # Concurrently: each process spends most of its time importing TensorFlow.
    processes = [_run_entry(f"--logdir={tmp_path / 'unused'}", *args) for args, _ in cases]
    for process, (args, flag) in zip(processes, cases):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode != 0, args
        naming = [line for line in stderr.splitlines() if f"{flag}=" in line]
        assert len(naming) == 1 and "error" in naming[0], (args, stderr)
    assert not (tmp_path / "unused").exists()
    assert sorted(os.listdir(other)) == [SETTINGS_FILE]
    assert taken.read_text() == "{}"


def test_rerun_appends_events_and_refuses_other_settings(tmp_path):
    settings = SuiteSettings(optimizers=("momentum",), learning_rates=(1e-2,), max_iters=100)
    run_and_report(settings, str(tmp_path))
    picture = (tmp_path / "paths_momentum.png").read_bytes()
    run_and_report(settings, str(tmp_path))
    assert len(glob.glob(str(tmp_path / "momentum@0.01" / "events.out.tfevents.*"))) == 2
    assert (tmp_path / "paths_momentum.png").read_bytes() == picture
    with pytest.raises(LogdirError, match="--logdir"):
        run_and_report(dataclasses.replace(settings, init_val=-0.5), str(tmp_path))


def test_bench_section_reports_a_speedup_of_matching_results():
    measured = bench_convergence.run(SuiteSettings(max_iters=50), repeats=1)
    assert measured["results_match"] is True
    assert measured["speedup"] == pytest.approx(
        measured["eager_seconds"] / measured["compiled_seconds"])
    assert measured["compiled_seconds"] <= measured["compiled_seconds_incl_first_trace"]
