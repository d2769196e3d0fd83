"""Bad input on every entry point's command line: one line naming the culprit, exit code 1,
and nothing written; and refused before TensorFlow loads, but where the check needs it."""

import concurrent.futures
import dataclasses
import json

import pytest

from tests.toolkit import environment, finish, start_module
from trainer.convergence.settings import SETTINGS_FILE, SuiteSettings

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.


@dataclasses.dataclass(frozen=True)
class BadInput:
    module: str
    args: str  # Split on spaces; relative paths are in the case's own working directory.
    error: str  # What the one error line says.
    tf_config: str | None = None  # TF_CONFIG, which is otherwise unset.
    # Whether the refusal needs TensorFlow loaded (a strategy, the data, a checkpoint, a built
    # optimizer, ...); a flag's own check never does (trainer/choices.py).
    loads_tensorflow: bool = False

    def __str__(self):
        tf_config = f" TF_CONFIG={self.tf_config}" if self.tf_config else ""
        return f"{self.module} {self.args}{tf_config}"


# Each case runs in a directory of its own holding these, and no process may change it. A
# default --logdir or --sweep_dir, relative, would land there too.
A_FILE = "a_file"  # An empty file where a directory is expected.
TAKEN = "taken.json"  # An existing file for an output that must be new.
OTHER_SUITE = "other"  # A convergence suite's logdir with other settings in it.
# Search spaces for launch.sweep --search, each wrong in one way but the last.
SEARCH_SPACES = {
    "unknown.json": {"one_minus_beta1": {"min": 0.01, "max": 0.1, "scaling": "log"}},
    "reversed.json": {"learning_rate": {"min": 0.1, "max": 0.001, "scaling": "log"}},
    "through_0.json": {"weight_decay": {"min": 0.0, "max": 0.1, "scaling": "log"}},
    "lr.json": {"learning_rate": {"min": 0.001, "max": 0.1, "scaling": "log"}},
}

CASES = [
    BadInput(
        "trainer.train",
        "--learning_rate=-1",
        "trainer.train: error: --learning_rate=-1.0: must be a positive number",
    ),
    BadInput(
        "trainer.train",
        "--batch_size=0",
        "trainer.train: error: --batch_size=0: must be at least 1",
    ),
    BadInput(
        "trainer.train",
        "--hidden_sizes=",
        "trainer.train: error: --hidden_sizes=: must be a comma-separated list",
    ),
    BadInput(
        "trainer.train",
        "--hidden_sizes=700,x",
        "--hidden_sizes=700,x: must be comma-separated integers",
    ),
    BadInput(
        "trainer.train",
        "--profile_steps=20,10",
        "--profile_steps=20,10: must be START,END with 0 <= START < END",
    ),
    BadInput("trainer.train", "--optimizer=sgd", "flag --optimizer=sgd: value should be one of"),
    BadInput(
        "trainer.train",
        "--grad_accum_steps=0",
        "trainer.train: error: --grad_accum_steps=0: must be at least 1",
    ),
    BadInput(
        "trainer.train",
        "--batch_size=100 --grad_accum_steps=3",
        "trainer.train: error: --batch_size=100: must be divisible by the 1 replicas in sync "
        "times --grad_accum_steps=3",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        "--label_noise=1",
        "trainer.train: error: --label_noise=1.0: must be a fraction at least 0, below 1",
    ),
    BadInput(
        "trainer.train",
        "--sam_rho=-0.1",
        "trainer.train: error: --sam_rho=-0.1: must be 0 (no SAM) or a positive radius",
    ),
    BadInput(
        "trainer.train",
        "--sam_mode=per_replica",
        "trainer.train: error: --sam_mode=per_replica: chooses how SAM perturbs: set --sam_rho",
    ),
    BadInput(
        "trainer.train",
        "--weight_decay=0.1",
        "trainer.train: error: --weight_decay=0.1: --optimizer=adam takes no weight_decay; "
        "adafactor, adamw, lamb, lion, muon, nadamw, schedule_free_adamw do",
    ),
    BadInput(
        "trainer.train",
        "--optimizer=adafactor --beta_1=0.9",
        "trainer.train: error: --beta_1=0.9: --optimizer=adafactor takes no beta_1; "
        "adam, adamw, lamb, lion, nadamw, schedule_free_adamw do",
    ),
    BadInput(
        "trainer.train",
        "--optimizer=adamw --weight_decay=-0.1",
        "trainer.train: error: --weight_decay=-0.1: must be 0 or a positive number",
    ),
    BadInput(
        "trainer.train",
        "--optimizer=lion --beta_1=0",
        "trainer.train: error: --optimizer=lion: beta_1 must be in (0, 1)",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        "--ema_decay=1",
        "trainer.train: error: --ema_decay=1.0: must be 0 (no average) or a decay in (0, 1)",
    ),
    BadInput(
        "trainer.train",
        "--optimizer=schedule_free_adamw --lr_schedule=cosine",
        "trainer.train: error: --lr_schedule=cosine: --optimizer=schedule_free_adamw takes no "
        "decay: its average of the weights replaces it; use --lr_schedule=constant",
    ),
    BadInput(
        "trainer.train",
        "--optimizer=schedule_free_adamw --lr_schedule=constant --ema_decay=0.999",
        "trainer.train: error: --ema_decay=0.999: --optimizer=schedule_free_adamw already "
        "validates, tests and exports an average of the weights (x); set no --ema_decay",
    ),
    BadInput(
        "trainer.train",
        "--clip_global_norm=-1",
        "trainer.train: error: --clip_global_norm=-1.0: must be 0 (no clipping) or a positive",
    ),
    BadInput(
        "trainer.train",
        "--optimizer=muon --exclude_layers=output",
        "trainer.train: error: --exclude_layers=output: must name layers of the model: dense_0",
    ),
    BadInput(
        "trainer.train",
        "--muon_scale=spectral",
        "trainer.train: error: --muon_scale=spectral: --optimizer=adam takes no muon_scale; "
        "muon does",
    ),
    BadInput(
        "trainer.train",
        "--optimizer=muon --muon_scale=keller",
        "flag --muon_scale=keller: value should be one of <moonlight|spectral>",
    ),
    BadInput(
        "trainer.train",
        "--loss_scale_growth_interval=10",
        "trainer.train: error: --loss_scale_growth_interval=10: only --precision=mixed_float16 "
        "scales the loss (not --precision=float32)",
    ),
    BadInput(
        "trainer.train",
        "--precision=mixed_bfloat16 --initial_loss_scale=1024",
        "trainer.train: error: --initial_loss_scale=1024.0: only --precision=mixed_float16 "
        "scales the loss (not --precision=mixed_bfloat16)",
    ),
    BadInput(
        "trainer.train",
        "--precision=mixed_float16 --initial_loss_scale=inf",
        "trainer.train: error: --initial_loss_scale=inf: must be a positive, finite scale",
    ),
    BadInput(
        "trainer.train",
        "--precision=mixed_float16 --loss_scale_growth_interval=0",
        "trainer.train: error: --loss_scale_growth_interval=0: must be at least 1",
    ),
    BadInput("trainer.train", "--strategy=tpu", "flag --strategy=tpu: value should be one of"),
    BadInput(
        "trainer.train",
        "--cpu_replicas=0",
        "trainer.train: error: --cpu_replicas=0: must be at least 1",
    ),
    BadInput("trainer.train", "--epochs=0", "trainer.train: error: --epochs=0: must be at least 1"),
    BadInput(
        "trainer.train",
        "--strategy=one_device --cpu_replicas=2",
        "trainer.train: error: --cpu_replicas=2: --strategy=one_device trains on one device",
    ),
    BadInput(
        "trainer.train",
        "--cpu_replicas=2 --batch_size=129",
        "trainer.train: error: --batch_size=129: must be divisible by the 2 replicas",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        f"--logdir={A_FILE}",
        f"trainer.train: error: --logdir={A_FILE}: is a file, not a directory",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        "--logdir=/proc/no_such_logdir",
        "trainer.train: error: --logdir=/proc/no_such_logdir: cannot create",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        "--checkpoint_every_steps=-1",
        "trainer.train: error: --checkpoint_every_steps=-1: must be 0 (epoch ends only)",
    ),
    BadInput(
        "trainer.train",
        "--nonfinite_retries=-1",
        "trainer.train: error: --nonfinite_retries=-1: must be 0 or more",
    ),
    BadInput(
        "trainer.train",
        "--warmup_epochs=10",
        "trainer.train: error: --warmup_epochs=10.0: must be at least 0 and less than --epochs",
    ),
    BadInput(
        "trainer.train", "--precision=float8", "flag --precision=float8: value should be one of"
    ),
    BadInput(
        "trainer.train",
        "epochs=2",
        "trainer.train: error: unexpected argument 'epochs=2': settings are flags",
    ),
    BadInput(
        "trainer.train",
        "--epochs=1 --warmup_epochs=1",
        "trainer.train: error: --warmup_epochs=1.0: must be at least 0 and less than --epochs",
    ),
    BadInput(
        "trainer.convergence",
        "adam",
        "trainer.convergence: error: unexpected argument 'adam': settings are flags",
    ),
    BadInput(
        "trainer.bench",
        "throughput",
        "trainer.bench: error: unexpected argument 'throughput': settings are flags",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        "--strategy=multi_worker",
        "trainer.train: error: TF_CONFIG is not set",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        "--strategy=multi_worker",
        "trainer.train: error: TF_CONFIG is malformed",
        tf_config="{not json",
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.train",
        "--strategy=multi_worker",
        "is not in its cluster",
        tf_config='{"cluster": {"worker": ["127.0.0.1:1"]}, '
        '"task": {"type": "worker", "index": 3}}',
        loads_tensorflow=True,
    ),
    BadInput(
        "trainer.convergence",
        "--optimizers=gd,sgd",
        "flag --optimizers=['gd', 'sgd']: must be distinct names of: adafactor, adam, adamw",
    ),
    BadInput(
        "trainer.convergence",
        "--learning_rates=0.1,-0.1",
        "flag --learning_rates=[0.1, -0.1]: must be distinct positive float32 numbers",
    ),
    BadInput(
        "trainer.convergence",
        "--max_iters=0",
        "flag --max_iters=0: must be at least 1",
    ),
    BadInput(
        "trainer.convergence",
        "--init_val=nan",
        "flag --init_val=nan: must be a finite float32 number",
    ),
    BadInput(
        "trainer.convergence",
        f"--json={TAKEN}",
        f"flag --json={TAKEN}: already exists",
    ),
    BadInput(
        "trainer.convergence",
        f"--logdir={OTHER_SUITE}",
        f"trainer.convergence: error: --logdir={OTHER_SUITE}: holds a suite run with other "
        "settings",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --grid=learning_rate",
        "launch.sweep: error: --grid=learning_rate: expected <trainer flag>=<value>",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --grid=seed=1 --parallel=0",
        "flag --parallel=0: must be at least 1",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --grid=optimizer=sgd",
        "launch.sweep: error: run optimizer=sgd: --optimizer=sgd: value should be one of",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --search=unknown.json --trials=2",
        "launch.sweep: error: --search=unknown.json: --one_minus_beta1 is not a trainer flag",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --search=reversed.json --trials=2",
        "launch.sweep: error: --search=reversed.json: learning_rate: min 0.1 is greater than "
        "max 0.001",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --search=through_0.json --trials=2",
        "launch.sweep: error: --search=through_0.json: weight_decay: a log range must be above "
        "0, not from 0.0",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --grid=seed=1 --trials=4",
        "launch.sweep: error: --trials=4: needs --search",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --grid=learning_rate=1e-3 --search=lr.json --trials=2",
        "launch.sweep: error: --search=lr.json: --learning_rate is set by "
        "--grid=learning_rate=1e-3",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --search=lr.json --trials=2 --seeds=2 -- --seed=3",
        "launch.sweep: error: trainer argument --seed=3: --seed is set by --seeds=2",
    ),
    BadInput(
        "launch.sweep",
        "--sweep_dir=new --grid=seed=1 --submit",
        "launch.sweep: error: --submit: only with --engine=slurm",
    ),
    BadInput(
        "launch.sweep",
        "--engine=slurm --sweep_dir=new --grid=seed=1 --tasks_per_node=3 -- --batch_size=100",
        "launch.sweep: error: run seed=1: --batch_size=100: must be divisible by the 3 replicas",
    ),
    BadInput(
        "launch.sweep",
        "--engine=kubernetes --image=mlp:1 --claim=runs --sweep_dir=/abs --grid=seed=1",
        "launch.sweep: error: --sweep_dir=/abs: with --engine=kubernetes, a directory on "
        "--claim, relative to its root",
    ),
    BadInput(
        "launch.sweep",
        "--status --sweep_dir=new",
        "launch.sweep: error: --sweep_dir=new: no sweep's plan there",
    ),
    BadInput(
        "launch.kubernetes",
        "--claim=mlp-runs --image=mlp:1 --workers=0",
        "launch.kubernetes: error: --workers=0: must be at least 1 (the chief)",
    ),
    BadInput("launch.local", "--workers=0", "flag --workers=0: 0 is not a positive integer"),
    BadInput(
        "launch.local",
        "--max_restarts=-1",
        "flag --max_restarts=-1: -1 is not a non-negative integer",
    ),
    # Trainer values are checked by the trainer's own flags before anything starts.
    BadInput(
        "launch.kubernetes",
        "--claim=mlp-runs --image=mlp:1 --workers=4 --gpus_per_worker=1 -- --batch_size=510",
        "launch.kubernetes: error: --batch_size=510: must be divisible by the 4 replicas",
    ),
    BadInput(
        "launch.kubernetes",
        "--claim=mlp-runs --image=mlp:1 -- --epochs=0",
        "launch.kubernetes: error: --epochs=0: must be at least 1",
    ),
    # Checked together with the --strategy=multi_worker the launcher gives every trainer.
    BadInput(
        "launch.kubernetes",
        "--claim=mlp-runs --image=mlp:1 -- --cpu_replicas=2",
        "launch.kubernetes: error: --cpu_replicas=2: --strategy=multi_worker trains on one device",
    ),
    BadInput(
        "launch.kubernetes",
        "--claim=mlp-runs --image=mlp:1 --engine=job",
        "flag --engine=job: value should be one of <tfjob|indexed-job>",
    ),
    BadInput(
        "launch.local",
        "--workers=2 -- --batch_size=129",
        "launch.local: error: --batch_size=129: must be divisible by the 2 replicas",
    ),
    BadInput(
        "launch.local",
        "-- --optimizer=sgd",
        "launch.local: error: --optimizer=sgd: value should be one of",
    ),
    BadInput("launch.slurm", "--nodes=0", "launch.slurm: error: --nodes=0: must be at least 1"),
    BadInput(
        "launch.slurm",
        "--tasks_per_node=0",
        "launch.slurm: error: --tasks_per_node=0: must be at least 1",
    ),
    BadInput(
        "launch.slurm",
        "--gpus_per_node=-1",
        "launch.slurm: error: --gpus_per_node=-1: must be 0 (CPU only) or more",
    ),
    BadInput(
        "launch.slurm",
        "--tasks_per_node=2 --gpus_per_node=3",
        "launch.slurm: error: --gpus_per_node=3: must divide equally among the "
        "--tasks_per_node=2 tasks",
    ),
    BadInput(
        "launch.slurm",
        "--submit -- --strategy=mirrored",
        "launch.slurm: error: trainer argument --strategy=mirrored: --strategy is set by "
        "launch.slurm (--strategy=multi_worker)",
    ),
    BadInput(
        "launch.slurm",
        "--submit -- --epoch=2",
        "launch.slurm: error: trainer argument --epoch=2: --epoch is not a trainer flag",
    ),
    BadInput(
        "launch.slurm",
        "--nodes=2 --gpus_per_node=4 -- --batch_size=100",
        "launch.slurm: error: --batch_size=100: must be divisible by the 8 replicas",
    ),
    BadInput(
        "launch.slurm",
        f"--script={A_FILE}/job.sh",
        f"launch.slurm: error: --script={A_FILE}/job.sh: Not a directory",
    ),
]


def contents(directory) -> dict[str, bytes | None]:
    """{path: its bytes, or None for a directory} of everything under `directory`."""
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case, each in its own directory, 8 at a time: each is mostly TensorFlow's start-up
    (seconds of CPU and some 400 MB), so more at once would take memory and not time."""
    env = {name: value for name, value in environment().items() if name != "TF_CONFIG"}

    def prepare(case):
        workdir = tmp_path_factory.mktemp("bad_input")
        (workdir / A_FILE).write_text("")
        (workdir / TAKEN).write_text("{}")
        for name, space in SEARCH_SPACES.items():
            (workdir / name).write_text(json.dumps(space))
        (workdir / OTHER_SUITE).mkdir()
        (workdir / OTHER_SUITE / SETTINGS_FILE).write_text(
            json.dumps(dataclasses.asdict(SuiteSettings(init_val=1.0)))
        )
        return workdir, contents(workdir)

    def run(case, workdir):
        case_env = env if case.tf_config is None else {**env, "TF_CONFIG": case.tf_config}
        note = workdir.parent / f"{workdir.name}.imports"  # Beside the directory, not in it.
        case_env = {**case_env, "NOTE_IMPORTS_TO": str(note)}
        args = case.module, *case.args.split()
        done = finish(start_module("tests.noting_imports", *args, cwd=workdir, env=case_env))
        return done, note.read_text()

    prepared = {case: prepare(case) for case in CASES}
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        done = pool.map(run, CASES, [workdir for workdir, _ in prepared.values()])
        return {case: (*prepared[case], *result) for case, result in zip(CASES, done)}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_one_line_naming_the_culprit_and_writes_nothing(case, outcomes):
    workdir, before, done, _ = outcomes[case]
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    naming = [line for line in lines if case.error in line]
    assert len(naming) == 1, done.stderr[-2000:]
    # Our own errors end the output; absl's flag errors add a line pointing at --helpfull.
    ours = naming == lines[-1:] and naming[0].startswith(f"{case.module}: error: ")
    absl = naming == lines[-2:-1] and naming[0].startswith("FATAL Flags parsing error: flag ")
    assert ours or absl, done.stderr[-2000:]
    assert contents(workdir) == before  # Refused before anything was written.


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_input_is_refused_before_tensorflow_loads_unless_the_check_needs_it(case, outcomes):
    *_, imports = outcomes[case]
    assert (imports == "tensorflow loaded") == case.loads_tensorflow
