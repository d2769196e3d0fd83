"""The launchers' shared check of the trainer flags they pass through: names, and values as the
trainer's own flag definitions and TrainConfig.validate see them. (Each launcher's command line
is in test_command_lines.py.)"""

import pytest

from launch.trainer_args import LaunchError, check_trainer_args, trainer_config
from trainer.choices import OPTIMIZERS
from trainer.config import TrainConfig

SET_HERE = {"strategy": "the launcher"}


@pytest.mark.parametrize(
    "args, replicas, problem",
    [
        (["--epoch=3"], None, "trainer argument --epoch=3: --epoch is not a trainer flag"),
        (
            ["--strategy=mirrored"],
            None,
            "trainer argument --strategy=mirrored: --strategy is set by the launcher",
        ),
        (["epochs=3"], None, "trainer argument 'epochs=3': expected --<trainer flag>=<value>"),
        (["--epochs=0"], None, "--epochs=0: must be at least 1"),
        (["--epochs=x"], None, "--epochs=x: invalid literal for int() with base 10: 'x'"),
        (
            ["--optimizer=sgd"],
            None,
            f"--optimizer=sgd: value should be one of <{'|'.join(OPTIMIZERS)}>",
        ),
        (["--deterministic=maybe"], None, "--deterministic=maybe: ('Non-boolean argument"),
        (["--jit_compile=maybe"], None, "--jit_compile=maybe: must be one of auto, true, false"),
        (["--hidden_sizes=700,x"], None, "--hidden_sizes=700,x: must be comma-separated integers"),
        (
            ["--epochs=2", "--warmup_epochs=2"],
            None,
            "--warmup_epochs=2.0: must be at least 0 and less than --epochs",
        ),
        (["--batch_size=510"], 4, "--batch_size=510: must be divisible by the 4 replicas in sync"),
        ([], 3, "--batch_size=128: must be divisible by the 3 replicas in sync"),  # The default.
        (["--batch_size=2"], 4, "--batch_size=2: must be divisible by the 4 replicas in sync"),
    ],
)
def test_a_value_the_trainer_would_refuse_is_one_line_naming_the_flag(args, replicas, problem):
    with pytest.raises(LaunchError) as error:
        check_trainer_args(args, SET_HERE, replicas=replicas)
    assert str(error.value).startswith(problem) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "args, replicas",
    [
        (["--batch_size=512", "--epochs=20"], 8),
        (["--batch_size=510"], None),  # No job size given: the trainer's count decides.
        (["--verbosity=1", "--nodeterministic", "--hidden_sizes=64,32"], 1),
    ],
)
def test_what_the_trainer_accepts_is_passed_through_as_given(args, replicas):
    assert check_trainer_args(args, SET_HERE, replicas=replicas) == args


def test_the_config_is_the_one_the_trainer_would_build(tmp_path):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text("# a run's flags.txt\n--optimizer=momentum\n--epochs=5\n")
    config = trainer_config([f"--flagfile={flagfile}", "--epochs=1", "--hidden_sizes=64"])
    # Later flags win; the default warm-up shrinks to a tenth of a short run, as in the trainer.
    assert config == TrainConfig(
        optimizer="momentum", epochs=1, hidden_sizes=(64,), warmup_epochs=0.1
    )


def test_schedule_free_takes_a_constant_rate_unless_a_schedule_is_asked_for():
    # Its average of the weights replaces the decay: the default schedule gives way to it; a
    # decaying schedule the user asks for is refused (tests/test_command_lines.py).
    config = trainer_config(["--optimizer=schedule_free_adamw"])
    assert config.lr_schedule == "constant"
    assert trainer_config(["--optimizer=adamw"]).lr_schedule == "cosine"
    with pytest.raises(LaunchError, match="^--lr_schedule=cosine: --optimizer=schedule_free"):
        trainer_config(["--optimizer=schedule_free_adamw", "--lr_schedule=cosine"])


@pytest.mark.parametrize(
    "args, jit_compile",
    [
        ([], "auto"),  # Chosen from the machine as the run starts (trainer/step/machine_fit.py).
        (["--jit_compile"], "true"),  # As when it was a boolean flag.
        (["--nojit_compile"], "false"),
        (["--jit_compile=auto"], "auto"),
        (["--jit_compile=True"], "true"),  # How flags.txt of an older run spells it.
        (["--jit_compile=0"], "false"),
    ],
)
def test_jit_compile_is_a_switch_that_also_takes_auto(args, jit_compile):
    config = trainer_config(args)
    assert config.jit_compile == jit_compile
    assert f"--jit_compile={jit_compile}\n" in config.flagfile()  # Read back the same.
    assert trainer_config([f"--jit_compile={jit_compile}"]) == config
