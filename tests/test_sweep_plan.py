"""A sweep's plan, in process: the quasirandom points of a search, the plan file, the status
read from a sweep's files, the table over seeds, and the Slurm array's script.
(Its command line's errors are in test_command_lines.py; real sweeps in test_sweep.py.)"""

import fcntl
import json
import math
import os

import pytest

from launch.slurm_lib import SlurmJob
from launch.sweep_plan import PLAN_FILE, plan_sweep, sweep_from_plan, write_plan
from launch.sweep_report import FINISHED, RunReport, attempt_header, format_table
from launch.sweep_slurm import array_spec, check_runs_fit, sweep_script
from launch.sweep_status import PENDING, RUNNING, run_status, unfinished
from launch.trainer_args import LaunchError
from trainer.recipe import CHECKPOINT_DIR
from trainer.run.files import RESULT_FILE
from trainer.run.lock import LOCK_FILE

SPACE = {
    "learning_rate": {"min": 1e-4, "max": 1e-1, "scaling": "log"},
    "warmup_epochs": {"min": 0.0, "max": 0.5, "scaling": "linear"},
    "batch_size": {"min": 100, "max": 1000},
    "optimizer": {"feasible_points": ["adam", "lion", "momentum"]},
}


def planned(tmp_path, space=SPACE, grid=(), trials=16, **options):
    (tmp_path / "space.json").write_text(json.dumps(space))
    return plan_sweep(
        list(grid),
        str(tmp_path / "sweep"),
        search=str(tmp_path / "space.json"),
        trials=trials,
        **options,
    )


def test_search_points_cover_the_space_and_repeat_for_the_same_seed(tmp_path):
    sweep = planned(tmp_path)
    points = [{flag: v.hparam for flag, v in run.values.items()} for run in sweep.runs]
    assert [run.trial for run in sweep.runs] == list(range(16))
    assert points == [
        {flag: v.hparam for flag, v in run.values.items()} for run in planned(tmp_path).runs
    ]
    assert points != [
        {flag: v.hparam for flag, v in run.values.items()}
        for run in planned(tmp_path, search_seed=1).runs
    ]
    rates = [p["learning_rate"] for p in points]
    assert all(1e-4 <= rate <= 1e-1 for rate in rates)
    # Log-uniform: each decade of the three gets some of 16 low-discrepancy points.
    assert {math.floor(math.log10(rate)) for rate in rates} == {-4, -3, -2}
    assert all(0.0 <= p["warmup_epochs"] <= 0.5 for p in points)
    assert all(isinstance(p["batch_size"], int) and 100 <= p["batch_size"] <= 1000 for p in points)
    assert {p["optimizer"] for p in points} == {"adam", "lion", "momentum"}
    # A run's name is its values, as its trainer gets them: 4 significant digits.
    first = sweep.runs[0]
    assert first.name == "trial=0," + ",".join(
        f"{flag}={value.label}" for flag, value in first.values.items()
    )
    assert f"--learning_rate={first.values['learning_rate'].label}" in sweep.command(first)
    assert len(first.values["learning_rate"].label.strip("0.").replace(".", "")) <= 4
    assert sweep.hparam_domains()["learning_rate"] == {"min": 1e-4, "max": 1e-1}
    assert sweep.hparam_domains()["optimizer"] == {"values": ["adam", "lion", "momentum"]}


def test_seeds_repeat_every_point_and_the_table_gives_mean_and_spread(tmp_path):
    sweep = planned(tmp_path, space={"learning_rate": SPACE["learning_rate"]}, trials=2, seeds=3)
    assert [(run.trial, run.seed) for run in sweep.runs] == [
        (t, s) for t in range(2) for s in range(3)
    ]
    assert sweep.runs[1].name == sweep.runs[1].point + ",seed=1"
    assert sweep.command(sweep.runs[1])[-1] == "--seed=1"
    accuracies = [0.5, 0.6, 0.7, 0.8, None, None]
    reports = [
        RunReport(run, FINISHED if a else PENDING, a) for run, a in zip(sweep.runs, accuracies)
    ]
    rows = [
        [cell.strip() for cell in line.split("|")[1:-1]]
        for line in format_table(sweep, reports).splitlines()
        if line.startswith("| ")
    ]
    assert rows[0] == ["trial", "learning_rate", "seed", "test accuracy", "status"]
    rate = sweep.runs[0].values["learning_rate"].label
    assert rows[1] == ["0", rate, "0", "0.5000", "finished"]
    assert rows[-3:] == [
        ["trial", "learning_rate", "mean test accuracy", "spread", "seeds finished"],
        ["0", rate, "0.6000", "0.1000", "3 of 3"],
        ["1", sweep.runs[3].values["learning_rate"].label, "0.8000", "-", "1 of 3"],
    ]
    # HParams sessions leave out the seed, so that TensorBoard groups a point's repeats.
    assert "seed" not in sweep.plan()["runs"][0]["hparams"]


@pytest.mark.parametrize(
    "space, options, problem",
    [
        ({"one_minus_beta1": {"min": 0.01, "max": 0.1}}, {}, "--one_minus_beta1 is not a trainer"),
        ({"learning_rate": {"min": 1, "max": 0.1}}, {}, "learning_rate: min 1 is greater than"),
        (
            {"learning_rate": {"min": 0, "max": 0.1, "scaling": "log"}},
            {},
            "learning_rate: a log range must be above 0, not from 0",
        ),
        (
            {"learning_rate": {"min": 0.1, "max": 1, "scaling": "exp"}},
            {},
            "scaling 'exp' must be one of linear, log",
        ),
        ({"learning_rate": {"feasible_points": []}}, {}, "a list of one value or more"),
        ({"learning_rate": [1, 2]}, {}, 'expected {"min": .., "max": ..'),
        ({"optimizer": {"feasible_points": ["sgd"]}}, {}, "--optimizer=sgd: value should be"),
        ({"batch_size": {"feasible_points": [1.5]}}, {}, "1.5 is not a value of --batch_size"),
        ({}, {}, "expected an object of trainer flags"),
        ({"run_name": {"feasible_points": ["a"]}}, {}, "--run_name is set by the sweep"),
        (
            {"learning_rate": {"min": 0.1, "max": 1}},
            {"grid": ["learning_rate=0.1"]},
            "--learning_rate is set by --grid=learning_rate=0.1",
        ),
        ({"seed": {"feasible_points": [1, 2]}}, {"seeds": 2}, "--seed is set by --seeds=2"),
        ({"learning_rate": {"min": 0.1, "max": 1}}, {"trials": 0}, "needs --trials=N"),
        ({"learning_rate": {"min": 0.1, "max": 1}}, {"seeds": 0}, "--seeds=0: must be at least"),
    ],
)
def test_a_bad_search_is_refused_naming_the_file_and_flag(tmp_path, space, options, problem):
    with pytest.raises(LaunchError) as error:
        planned(tmp_path, space=space, **options)
    assert problem in str(error.value)
    assert os.listdir(tmp_path) == ["space.json"]  # Nothing written.


def test_trials_without_a_search_are_refused(tmp_path):
    with pytest.raises(LaunchError, match="--trials=4: needs --search"):
        plan_sweep(["seed=1"], str(tmp_path), trials=4)


def test_the_plan_file_reads_back_as_the_same_sweep_and_refuses_another(tmp_path):
    sweep = planned(tmp_path, grid=["epochs=1,2"], trials=3, seeds=2)
    path = write_plan(sweep)
    assert path == str(tmp_path / "sweep" / PLAN_FILE)
    assert json.loads(open(path).read()) == sweep.plan()
    assert sweep_from_plan(str(tmp_path / "sweep")).runs == sweep.runs
    write_plan(planned(tmp_path, grid=["epochs=1,2"], trials=3, seeds=2))  # The same: kept.
    with pytest.raises(LaunchError, match="holds the plan of another sweep"):
        write_plan(planned(tmp_path, grid=["epochs=1,2"], trials=4, seeds=2))
    assert json.loads(open(path).read()) == sweep.plan()


def test_status_reads_each_run_from_its_files(tmp_path):
    sweep = plan_sweep(["seed=0,1,2,3,4"], str(tmp_path))
    finished, running, failed, stopped, not_started = sweep.runs
    for run in sweep.runs[:4]:
        os.makedirs(sweep.run_dir(run))

    def write(run, name, text):
        path = os.path.join(sweep.run_dir(run), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(text)

    write(finished, RESULT_FILE, json.dumps({"test_accuracy": 0.9, "steps": 50}))
    checkpoint_state = 'model_checkpoint_path: "ckpt-100"\nall_model_checkpoint_paths: "ckpt-50"\n'
    for run in (running, stopped):
        write(run, os.path.join(CHECKPOINT_DIR, "checkpoint"), checkpoint_state)
    write(failed, "train.log", attempt_header(["trainer"]) + "trainer.train: error: first\n")
    write(failed, "train.log", attempt_header(["trainer"]) + "trainer.train: error: --x=1: bad\n")
    write(stopped, "train.log", attempt_header(["trainer"]) + "SIGTERM: stopped at step 100\n")
    write(running, LOCK_FILE, "")
    held = os.open(os.path.join(sweep.run_dir(running), LOCK_FILE), os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # As the trainer holds it while it runs.
    try:
        reports = [run_status(sweep, run) for run in sweep.runs]
        assert [(r.status, r.test_accuracy, r.message) for r in reports] == [
            (FINISHED, 0.9, ""),
            (RUNNING, None, "at step 100"),
            ("failed", None, "trainer.train: error: --x=1: bad"),
            (PENDING, None, "stopped at step 100: SIGTERM: stopped at step 100"),
            (PENDING, None, "not started"),
        ]
        # What a resubmission runs: neither the finished run nor the running one.
        assert unfinished(sweep) == [2, 3, 4]
    finally:
        os.close(held)
    assert run_status(sweep, running).status == PENDING  # The kernel dropped the lock.


def test_the_array_script_picks_each_tasks_run_from_the_plan(tmp_path):
    sweep = plan_sweep(["seed=0,1,2,3,4,5"], str(tmp_path), trainer_args=["--batch_size=100"])
    assert array_spec([0, 1, 2, 4, 5], 2) == "0-2,4-5%2"
    assert array_spec([3], 1) == "3%1"
    single = sweep_script(sweep, SlurmJob(name="s", output="o"), [0, 1, 2, 4, 5], 2)
    assert "#SBATCH --array=0-2,4-5%2\n" in single and "#SBATCH --requeue\n" in single
    plan = f"{sweep.sweep_dir}/{PLAN_FILE}"
    assert single.count(f"-m launch.sweep_task {plan}\n") == 1  # No flags rebuilt in shell.
    assert 'scontrol requeue "$SLURM_JOB_ID"' in single
    # Runs of several tasks are multi-worker, their batch split among the replicas.
    multi = sweep_script(sweep, SlurmJob(tasks_per_node=2), [0], 1)
    assert f"-m launch.sweep_task {plan} --strategy=multi_worker\n" in multi
    check_runs_fit(sweep, SlurmJob(tasks_per_node=4))
    with pytest.raises(LaunchError, match="run seed=0: --batch_size=100: must be divisible"):
        check_runs_fit(sweep, SlurmJob(tasks_per_node=3))
