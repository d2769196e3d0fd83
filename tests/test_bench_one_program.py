"""The one_program section on a small model: each workload compiled as it says, and its table."""

import dataclasses

import pytest
import tensorflow as tf

from trainer.bench import one_program as bench_one_program
from trainer.bench import training as bench_training
from trainer.config import TrainConfig

pytestmark = pytest.mark.slow  # Trains for a while.

# 50 steps an epoch of a small model.
SMALL = TrainConfig(hidden_sizes=(16,), batch_size=1000)


@pytest.fixture
def small_section(monkeypatch):
    """The section at one batch size of SMALL, with one round, recording its workloads."""
    monkeypatch.setattr(bench_one_program, "BATCH_SIZES", (1000,))
    monkeypatch.setattr(
        bench_one_program,
        "bench_config",
        lambda batch_size, **settings: dataclasses.replace(SMALL, **settings),
    )
    measured = {}

    def measure(workloads, label):
        measured.update(workloads)
        return bench_training.measure(workloads, 1, label)

    monkeypatch.setattr(bench_one_program, "measure", measure)
    return measured


def xla_functions(trainer) -> set[str]:
    """Names of the functions the trainer's compiled loop calls with XLA, at any depth."""
    loop = trainer.state.train_loop.get_concrete_function(trainer.batches, tf.constant(1))
    library = loop.graph.as_graph_def().library.function
    return {f.signature.name for f in library if f.attr["_XlaMustCompile"].b}


def test_the_section_compares_one_program_with_the_step_in_pieces(small_section):
    results = bench_one_program.one_program()
    one_program = xla_functions(small_section["one_program"])
    in_pieces = xla_functions(small_section["in_pieces"])
    assert any("train_step" in name for name in one_program), one_program
    assert not any("train_step" in name for name in in_pieces), in_pieces
    assert any("gradients" in name for name in in_pieces), in_pieces
    no_xla = xla_functions(small_section["no_xla"])
    assert not any("train_step" in name or "gradients" in name for name in no_xla), no_xla
    for name in ("one_program", "in_pieces", "no_xla"):
        assert results[f"b1000_{name}_examples_per_s"] > 0
    for ratio in ("one_program_over_in_pieces", "one_program_over_no_xla", "in_pieces_over_no_xla"):
        assert results[f"b1000_{ratio}"] > 0
