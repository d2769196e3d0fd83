"""The sweep launcher, running real tiny sweeps of the real trainer, and its checks of a grid.
(Its command line's errors are in test_command_lines.py.)"""

import dataclasses
import glob
import io
import json
import os
import re
import signal
import subprocess
import time

import pytest
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import (
    api_pb2,
    backend_context,
    get_experiment,
    list_session_groups,
)

from launch import sweep_lib
from launch.sweep_lib import EXPERIMENT_SUFFIX, LOG_FILE, METRICS, SESSION_SUFFIX
from launch.sweep_plan import PLAN_FILE, plan_sweep
from launch.trainer_args import LaunchError
from tests import slurm_cluster
from tests.toolkit import Pause, command_line, environment, finish, run_module, start_module
from trainer.choices import OPTIMIZERS
from trainer.config import TrainConfig
from trainer.run.files import FLAGS_FILE, RESULT_FILE

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# 50 steps of a small model: a few seconds a run, most of it TensorFlow's start-up.
TINY_CONFIG = TrainConfig(
    hidden_sizes=(32,),
    batch_size=1000,
    epochs=1,
    data_source="bundled",
    warmup_epochs=0.0,
    steps_per_loop=25,
)
TINY = command_line(TINY_CONFIG)
GRID = ["--grid=optimizer=adam,momentum", "--grid=learning_rate=1e-3,3e-3"]
RUNS = [
    "optimizer=adam,learning_rate=0.001",
    "optimizer=adam,learning_rate=0.003",
    "optimizer=momentum,learning_rate=0.001",
    "optimizer=momentum,learning_rate=0.003",
]


def start_sweep(sweep_dir, *args, trainer_args=TINY, env=None) -> subprocess.Popen:
    """launch.sweep on `sweep_dir`; `env`: what to add to its environment."""
    return start_module(
        "launch.sweep",
        f"--sweep_dir={sweep_dir}",
        *args,
        "--",
        *trainer_args,
        env={**environment(), **(env or {})},
    )


def run_sweep(sweep_dir, *args, **kwargs) -> tuple[int, str, str]:
    done = finish(start_sweep(sweep_dir, *args, **kwargs))
    return done.returncode, done.stdout, done.stderr


def table_rows(stdout: str) -> list[list[str]]:
    """The sweep's closing table, one list of cells a row, header and rule left out."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep") / "grid"
    code, stdout, stderr = run_sweep(sweep_dir, "--parallel=2", *GRID)
    assert code == 0, stdout + stderr
    return sweep_dir, stdout


def test_every_combination_is_a_finished_run_of_the_trainer(sweep):
    sweep_dir, stdout = sweep
    assert sorted(os.listdir(sweep_dir)) == sorted(
        RUNS
        + [PLAN_FILE]
        + [os.path.basename(p) for p in glob.glob(f"{sweep_dir}/*{EXPERIMENT_SUFFIX}")]
    )
    for run in RUNS:
        run_dir = sweep_dir / run
        assert json.loads((run_dir / RESULT_FILE).read_text())["steps"] == 50
        optimizer, learning_rate = (part.split("=")[1] for part in run.split(","))
        flags_text = (run_dir / FLAGS_FILE).read_text()
        assert f"--optimizer={optimizer}\n" in flags_text
        assert f"--learning_rate={learning_rate}\n" in flags_text
        assert "--hidden_sizes=32\n" in flags_text  # Passed through after `--`.
        assert "launch.sweep:" in (run_dir / LOG_FILE).read_text()
    rows = table_rows(stdout)
    assert [row[:2] for row in rows] == [
        run.replace("optimizer=", "").split(",learning_rate=") for run in RUNS
    ]
    for row, run in zip(rows, RUNS):
        recorded = json.loads((sweep_dir / run / RESULT_FILE).read_text())
        assert row[2:] == [f"{recorded['test_accuracy']:.4f}", "finished"]


def hparams_dashboard(sweep_dir) -> tuple[dict, list]:
    """The sweep as TensorBoard's HParams plugin shows it: {flag: its values, or its interval},
    and the session groups."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(sweep_dir))
    multiplexer.Reload()
    plugin_context = backend_context.Context(
        base_plugin.TBContext(
            logdir=str(sweep_dir),
            multiplexer=multiplexer,
            data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(sweep_dir)),
        )
    )
    request = context.RequestContext()

    experiment = get_experiment.Handler(
        request, plugin_context, "", api_pb2.GetExperimentRequest()
    ).run()
    domains = {
        info.name: [
            getattr(value, value.WhichOneof("kind")) for value in info.domain_discrete.values
        ]
        or (info.domain_interval.min_value, info.domain_interval.max_value)
        for info in experiment.hparam_infos
    }
    assert [info.name.tag for info in experiment.metric_infos] == list(METRICS)
    groups = (
        list_session_groups.Handler(
            request,
            plugin_context,
            "",
            api_pb2.ListSessionGroupsRequest(
                start_index=0,
                slice_size=10,
                allowed_statuses=[api_pb2.STATUS_UNKNOWN],
                aggregation_type=api_pb2.AGGREGATION_AVG,
            ),
        )
        .run()
        .session_groups
    )
    return domains, groups


def test_tensorboard_hparams_dashboard_shows_the_sweep(sweep):
    """Reads the sweep as TensorBoard's HParams plugin does: its experiment and session groups."""
    sweep_dir, _ = sweep
    domains, groups = hparams_dashboard(sweep_dir)
    assert domains == {"optimizer": ["adam", "momentum"], "learning_rate": [0.001, 0.003]}
    assert sorted(group.name for group in groups) == sorted(RUNS)
    for group in groups:
        recorded = json.loads((sweep_dir / group.name / RESULT_FILE).read_text())
        metrics = {m.name.tag: m.value for m in group.metric_values}
        assert set(metrics) == set(METRICS)
        assert metrics["test/accuracy"] == pytest.approx(recorded["test_accuracy"])
        assert f"optimizer={group.hparams['optimizer'].string_value}," in group.name
        assert group.name.endswith(f"learning_rate={group.hparams['learning_rate'].number_value}")


def test_a_rerun_skips_the_finished_runs(sweep):
    sweep_dir, _ = sweep
    events_before = sorted(glob.glob(f"{sweep_dir}/**/events.out.tfevents.*", recursive=True))
    code, stdout, stderr = run_sweep(sweep_dir, "--parallel=2", *GRID)
    assert code == 0, stdout + stderr
    progress = [line.split()[0] for line in stdout.splitlines()[1:] if not line.startswith("|")]
    assert progress == ["skipped"] * 4 + ["TensorBoard"]  # No "started".
    assert [row[3] for row in table_rows(stdout)] == ["skipped (finished before)"] * 4
    # No trainer wrote events, the sessions were kept, the experiment was replaced, not added to.
    events_after = sorted(glob.glob(f"{sweep_dir}/**/events.out.tfevents.*", recursive=True))
    assert len(events_after) == len(events_before)
    assert [p for p in events_after if p.endswith(SESSION_SUFFIX)] == [
        p for p in events_before if p.endswith(SESSION_SUFFIX)
    ]


def test_a_failing_run_is_reported_and_the_others_still_finish(tmp_path):
    # A batch the flags allow but the data cannot fill: only the trainer finds out.
    trainer_args = [arg for arg in TINY if not arg.startswith("--batch_size=")]
    code, stdout, stderr = run_sweep(
        tmp_path, "--parallel=2", "--grid=batch_size=100000,1000", trainer_args=trainer_args
    )
    assert code == 1, stdout + stderr
    failed, finished = table_rows(stdout)
    assert failed[0] == "100000" and failed[2].startswith("failed (exit 1): ")
    assert failed[2].endswith(
        "trainer.train: error: --batch_size=100000: larger than the 50000 training examples"
    )
    assert f"log of batch_size=100000: {tmp_path / 'batch_size=100000' / LOG_FILE}" in stdout
    assert finished[0] == "1000" and finished[2] == "finished"
    assert (tmp_path / "batch_size=1000" / RESULT_FILE).exists()
    assert not (tmp_path / "batch_size=100000" / RESULT_FILE).exists()


def test_a_run_refused_by_absl_reports_absls_error_not_its_pointer_to_help(tmp_path):
    # The base flagfile is checked when the sweep is planned; gone by the time the run starts,
    # absl refuses it and adds "Pass --helpshort or --helpfull to see help on flags." below.
    base = tmp_path / "base_flags.txt"
    base.write_text("--epochs=1\n")
    sweep = plan_sweep(["seed=1"], str(tmp_path / "sweep"), str(base), TINY)
    base.unlink()
    [report] = sweep_lib.run_sweep(sweep, out=io.StringIO())
    assert report.status == "failed (exit 1)"
    assert report.message == (
        "FATAL Flags parsing error: ERROR:: Unable to open flagfile: "
        f"[Errno 2] No such file or directory: '{base}'"
    )


def test_sigterm_preempts_the_runs_and_a_rerun_resumes_them(tmp_path):
    # 150 steps; the trainer is held after the first epoch's checkpoint while the sweep is
    # sent SIGTERM, which it passes on.
    longer = command_line(dataclasses.replace(TINY_CONFIG, epochs=3))
    log = tmp_path / "seed=0" / LOG_FILE
    pause = Pause(tmp_path / "pause", 50)
    process = start_sweep(tmp_path, "--grid=seed=0", trainer_args=longer, env=pause.env())
    pause.wait(process)
    process.send_signal(signal.SIGTERM)
    pause.release_once_signalled()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stdout + stderr
    [[_, _, status]] = table_rows(stdout)
    assert status.startswith("preempted: ") and "SIGTERM: stopped at step 50" in status

    code, stdout, stderr = run_sweep(tmp_path, "--grid=seed=0", trainer_args=longer)
    assert code == 0, stdout + stderr
    assert json.loads((tmp_path / "seed=0" / RESULT_FILE).read_text())["steps"] == 150
    assert log.read_text().count("launch.sweep:") == 2  # Both attempts' output kept.
    assert "resumed from" in log.read_text()


def test_ctrl_c_stops_the_runs_with_a_checkpoint_and_the_sweep_exits_130(tmp_path):
    # The first run's trainer is held as its run starts while the sweep gets Ctrl-C; the second
    # run never starts.
    pause = Pause(tmp_path / "pause", None)
    process = start_sweep(tmp_path, "--grid=seed=0,1", env=pause.env())
    pause.wait(process)
    process.send_signal(signal.SIGINT)
    pause.release_once_signalled()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    assert (
        "Ctrl-C (SIGINT): stopping the running trainers at their next step; Ctrl-C again "
        "stops them at once; rerun the sweep to resume\n" in stdout
    )
    interrupted, not_started = table_rows(stdout)
    # Passed on once, as a Ctrl-C, which the trainer acted on at its first step boundary: a
    # second would have ended it at once, without this line.
    assert interrupted[2].startswith("interrupted: ")
    assert interrupted[2].endswith(
        "Ctrl-C: stopped at step 0 of 50 before training a step; rerun the same command to resume"
    )
    assert not_started[2] == "not started"


@pytest.mark.parametrize(
    "grid, options, problem",
    [
        (["learning_rate"], {}, "--grid=learning_rate: expected <trainer flag>="),
        (
            ["learning_rates=1e-3"],
            {},
            "--grid=learning_rates=1e-3: --learning_rates is not a trainer",
        ),
        (["learning_rate="], {}, "--grid=learning_rate=: an empty value"),
        (["learning_rate=1e-3,,2e-3"], {}, "--grid=learning_rate=1e-3,,2e-3: an empty value"),
        (["learning_rate=fast"], {}, "'fast' is not a value of --learning_rate: expected a number"),
        (["batch_size=1.5"], {}, "'1.5' is not a value of --batch_size: expected an integer"),
        (["hidden_sizes=700x0"], {}, "expected positive integers joined by x"),
        (
            ["learning_rate=1e-3,0.001"],
            {},
            "--grid=learning_rate=1e-3,0.001: 0.001 is listed twice",
        ),
        (["seed=1", "seed=2"], {}, "--grid=seed=2: --seed is already swept by --grid=seed=1"),
        (["run_name=a,b"], {}, "--grid=run_name=a,b: --run_name is set by the sweep"),
        (["logdir=a,b"], {}, "--grid=logdir=a,b: --logdir is set by --sweep_dir"),
        (["data_dir=/data"], {}, "'/data' is not a value of --data_dir"),
        ([], {}, "--grid: give at least one"),
        (["seed=1"], {"sweep_dir": "{tmp}/a_file"}, "--sweep_dir={tmp}/a_file: is a file"),
        (["seed=1"], {"base_flagfile": "{tmp}/none"}, "--base_flagfile={tmp}/none: no such file"),
        # Values the trainer would refuse, checked by its own flags for every run before any starts.
        (
            ["optimizer=adam,sgd"],
            {},
            "run optimizer=sgd: --optimizer=sgd: value should be one of "
            + f"<{'|'.join(OPTIMIZERS)}>",
        ),
        (
            ["learning_rate=1e-3,-1"],
            {},
            "run learning_rate=-1.0: --learning_rate=-1.0: must be a positive number",
        ),
        (
            ["epochs=1,2", "warmup_epochs=1"],
            {},
            "run epochs=1,warmup_epochs=1.0: "
            "--warmup_epochs=1.0: must be at least 0 and less than --epochs",
        ),
        (
            ["seed=1"],
            {"trainer_args": ["--epochs=0"]},
            "run seed=1: --epochs=0: must be at least 1",
        ),
        (
            ["seed=1"],
            {"base_flagfile": "{tmp}/bad_flags.txt"},
            "run seed=1: --precision=float8: value should be one of",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_flag(tmp_path, grid, options, problem):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "bad_flags.txt").write_text("--precision=float8\n")
    options = {
        name: value.format(tmp=tmp_path) if isinstance(value, str) else value
        for name, value in options.items()
    }
    with pytest.raises(LaunchError) as error:
        plan_sweep(grid, **{"sweep_dir": str(tmp_path / "sweep"), **options})
    assert problem.format(tmp=tmp_path) in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "bad_flags.txt"]


def test_values_name_runs_and_reach_the_trainer_as_typed_flags(tmp_path):
    sweep = plan_sweep(
        ["hidden_sizes=700x500,64", "deterministic=True"],
        str(tmp_path),
        trainer_args=["--epochs=2"],
    )
    [first, second] = sweep.runs
    assert [run.name for run in plan_sweep(["hidden_sizes=700,500"], str(tmp_path)).runs] == [
        "hidden_sizes=700",
        "hidden_sizes=500",
    ]  # Two one-layer models.
    assert first.name == "hidden_sizes=700x500,deterministic=true"
    assert sweep.command(first)[-4:] == [
        f"--run_name={first.name}",
        "--epochs=2",
        "--hidden_sizes=700,500",
        "--deterministic=true",
    ]
    assert second.values["hidden_sizes"].hparam == "64"
    with pytest.raises(LaunchError, match=r"--hidden_sizes is set by --grid=hidden_sizes=64"):
        plan_sweep(["hidden_sizes=64"], str(tmp_path), trainer_args=["--hidden_sizes=32"])
    with pytest.raises(LaunchError, match=r"--logdir is set by --sweep_dir"):
        plan_sweep(["seed=1"], str(tmp_path), trainer_args=["--logdir=x"])
    with pytest.raises(LaunchError, match=r"--epoch is not a trainer flag"):
        plan_sweep(["seed=1"], str(tmp_path), trainer_args=["--epoch=2"])
    # Values are checked per run, together: this warm-up is shorter than every run.
    plan_sweep(["epochs=20,30"], str(tmp_path), trainer_args=["--warmup_epochs=15"])


def test_another_plan_in_the_same_directory_is_refused(sweep):
    sweep_dir, _ = sweep
    plan = (sweep_dir / PLAN_FILE).read_bytes()
    code, stdout, stderr = run_sweep(sweep_dir, *GRID[:1])
    assert code == 1 and stdout == "", stderr
    assert stderr.splitlines()[-1].startswith(
        f"launch.sweep: error: --sweep_dir={sweep_dir}: holds the plan of another sweep"
    )
    assert (sweep_dir / PLAN_FILE).read_bytes() == plan


# On Slurm: the suite's real one-node cluster (tests/slurm_cluster.py).
ARRAY_SECONDS = 300  # Generous: 2 cores shared with other tests and engineers.
# The search the array runs: 4 quasirandom points of a log-uniform learning rate.
SPACE = {"learning_rate": {"min": 1e-3, "max": 1e-2, "scaling": "log"}}
SEARCH_SEED = 7


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tuning_search_space.json"
    path.write_text(json.dumps(SPACE))
    return path


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    with slurm_cluster.running(tmp_path_factory.mktemp("slurm"), environment()) as cluster:
        yield cluster


def submit(slurm, sweep_dir, *args, trainer_args=TINY, env=None) -> str:
    """launch.sweep --engine=slurm --submit; the array's job id."""
    done = run_module(
        "launch.sweep",
        "--engine=slurm",
        "--submit",
        f"--sweep_dir={sweep_dir}",
        *args,
        "--",
        *trainer_args,
        env={**slurm.env, **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.fullmatch(r"\d+\n", done.stdout), done.stdout
    return done.stdout.strip()


def wait_for_array(slurm, job_id: str) -> None:
    """Until no task of the array is pending or running (a requeued one is pending)."""
    deadline = time.monotonic() + ARRAY_SECONDS
    while slurm.run("squeue", "--noheader", f"--jobs={job_id}", check=False).stdout.strip():
        assert time.monotonic() < deadline, slurm.run("squeue").stdout
        time.sleep(1)


def status(sweep_dir) -> tuple[int, str]:
    done = run_module("launch.sweep", "--status", f"--sweep_dir={sweep_dir}")
    return done.returncode, done.stdout


@pytest.fixture(scope="module")
def arrays(slurm, tmp_path_factory, space_file):
    """On Slurm at once: the 2x2 grid and a 4-trial search, 2 runs at a time each, a longer run
    held after its first checkpoint, to be sent SIGTERM there, and a run of 2 tasks.
    {name: (sweep_dir, job id)}."""
    root = tmp_path_factory.mktemp("arrays")
    pause = Pause(root / "pause", 50)
    search = [f"--search={space_file}", "--trials=4", f"--search_seed={SEARCH_SEED}"]
    submitted = {
        "grid": (root / "grid", submit(slurm, root / "grid", "--parallel=2", *GRID)),
        "search": (root / "search", submit(slurm, root / "search", "--parallel=2", *search)),
        "preempted": (
            root / "preempted",
            submit(
                slurm,
                root / "preempted",
                "--grid=seed=0",
                trainer_args=command_line(dataclasses.replace(TINY_CONFIG, epochs=3)),
                env=pause.env(),
            ),
        ),
        # A run of 2 Slurm tasks: the array task is itself a multi-worker job.
        "two_tasks": (
            root / "two_tasks",
            submit(slurm, root / "two_tasks", "--grid=seed=0", "--tasks_per_node=2"),
        ),
    }
    # The node's SIGTERM, straight to the held trainer, as Slurm sends it --signal_seconds
    # before the time limit: delivered before it goes on (scancel's goes through slurmd and may
    # arrive after the trainer has finished).
    os.kill(pause.wait(), signal.SIGTERM)
    pause.release()
    for _, job_id in submitted.values():
        wait_for_array(slurm, job_id)
    return submitted


def test_a_grid_array_gives_the_local_engines_table_and_hparams(arrays, sweep):
    (sweep_dir, job_id), (local_dir, local_stdout) = arrays["grid"], sweep
    code, stdout = status(sweep_dir)
    assert code == 0, stdout
    got, want = table_rows(stdout), table_rows(local_stdout)
    assert [row[:2] + row[3:] for row in got] == [row[:2] + row[3:] for row in want]
    for got_row, want_row in zip(got, want):
        # The same flags on the same data: the same model, whichever engine started it.
        assert float(got_row[2]) == pytest.approx(float(want_row[2]), abs=0.01)
    assert (sweep_dir / PLAN_FILE).read_text() == (local_dir / PLAN_FILE).read_text()
    (domains, groups), (local_domains, local_groups) = map(
        hparams_dashboard, (sweep_dir, local_dir)
    )
    assert domains == local_domains

    def values(groups):
        return sorted((g.name, sorted((k, str(v)) for k, v in g.hparams.items())) for g in groups)

    assert values(groups) == values(local_groups)
    # Each run's trainer output in its train.log; each task's own lines beside the runs.
    for run in RUNS:
        assert "launch.sweep: " in (sweep_dir / run / LOG_FILE).read_text()
    assert len(glob.glob(f"{sweep_dir}/slurm-{job_id}_*.out")) == 4


def test_a_search_array_runs_the_points_planned_alike_in_every_process(arrays, space_file):
    sweep_dir, _ = arrays["search"]
    plan = json.loads((sweep_dir / PLAN_FILE).read_text())
    # Planned again here, in this process, from the same file and seed: the same runs.
    again = plan_sweep(
        [],
        str(sweep_dir),
        trainer_args=TINY,
        search=str(space_file),
        trials=4,
        search_seed=SEARCH_SEED,
    )
    assert again.plan() == plan
    rates = [run.values["learning_rate"].hparam for run in again.runs]
    assert len(set(rates)) == 4 and all(1e-3 <= rate <= 1e-2 for rate in rates)
    code, stdout = status(sweep_dir)
    assert code == 0, stdout
    rows = table_rows(stdout)
    assert [row[:2] + row[3:] for row in rows] == [
        [str(trial), repr(rate), "finished"] for trial, rate in enumerate(rates)
    ]
    for row, run in zip(rows, plan["runs"]):
        recorded = json.loads((sweep_dir / run["name"] / RESULT_FILE).read_text())
        assert row[2] == f"{recorded['test_accuracy']:.4f}"
        assert f"--learning_rate={row[1]}\n" in (sweep_dir / run["name"] / FLAGS_FILE).read_text()
    domains, groups = hparams_dashboard(sweep_dir)
    assert domains == {"learning_rate": (1e-3, 1e-2)}
    assert sorted(group.name for group in groups) == sorted(run["name"] for run in plan["runs"])


def test_submitting_a_finished_sweep_again_submits_nothing(slurm, arrays):
    sweep_dir, _ = arrays["grid"]
    done = run_module(
        "launch.sweep",
        "--engine=slurm",
        "--submit",
        f"--sweep_dir={sweep_dir}",
        "--parallel=2",
        *GRID,
        "--",
        *TINY,
        env=slurm.env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every run is finished or running; nothing to submit" in done.stderr
    assert [row[3] for row in table_rows(done.stdout)] == ["finished"] * 4
    assert not slurm.run("squeue", "--noheader").stdout.strip()


def test_submit_without_sbatch_is_one_line_and_writes_nothing(tmp_path):
    done = run_module(
        "launch.sweep",
        "--engine=slurm",
        "--submit",
        f"--sweep_dir={tmp_path / 'sweep'}",
        "--grid=seed=0",
        env={**environment(), "PATH": str(tmp_path)},
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "launch.sweep: error: --submit: sbatch not found; is this a Slurm login node?"
    )
    assert os.listdir(tmp_path) == []


def test_a_task_preempted_by_sigterm_is_requeued_and_resumes(slurm, arrays):
    sweep_dir, job_id = arrays["preempted"]
    run_dir = sweep_dir / "seed=0"
    state = slurm.job(job_id)
    output = (sweep_dir / f"slurm-{job_id}_0.out").read_text()
    assert (state["JobState"], state["Restarts"]) == ("COMPLETED", "1"), output
    assert f"launch.sweep: preempted (exit code 143); requeueing job {job_id}" in output
    log = (run_dir / LOG_FILE).read_text()
    assert log.count("launch.sweep: ") == 2  # Both attempts, each headed by its command.
    assert "SIGTERM: stopped at step 50" in log
    assert re.search(r"resumed from \S+/ckpt-50 at step 50", log), log
    assert json.loads((run_dir / RESULT_FILE).read_text())["steps"] == 150
    code, stdout = status(sweep_dir)
    assert code == 0 and [row[2] for row in table_rows(stdout)] == ["finished"], stdout


def test_a_run_of_two_tasks_trains_as_one_multi_worker_job(arrays):
    # --tasks_per_node applies to each array task: its 2 trainers are the workers of one job.
    sweep_dir, job_id = arrays["two_tasks"]
    run_dir = sweep_dir / "seed=0"
    log = (run_dir / LOG_FILE).read_text()
    # Each worker's line: "CollectiveAllReduceStrategy with 2 replica(s)", the second's
    # "(worker 1)"; TensorFlow names MultiWorkerMirroredStrategy's class so.
    assert len(re.findall(r"Strategy with 2 replica\(s\)", log)) == 2, log
    assert "(worker 1)" in log
    steps = 50_000 // TINY_CONFIG.batch_size
    fingerprints = re.findall(rf"weights fingerprint at step {steps}: (\w+)", log)
    assert len(fingerprints) == 2 and len(set(fingerprints)) == 1, log  # Both, the same.
    assert json.loads((run_dir / RESULT_FILE).read_text())["steps"] == steps
    code, stdout = status(sweep_dir)
    assert code == 0 and [row[2] for row in table_rows(stdout)] == ["finished"], stdout
