"""Ours and Keras's XLA-compiled `fit` side by side: their speed in interleaved rounds and where
each step's time goes, read from a tf.profiler trace of one epoch of each.

Both sides compile their step with XLA whatever the machine (ours `--jit_compile=true`, Keras
`jit_compile=True`, fed by tf.data at steps_per_execution 50, as a Keras user after speed writes
it), so the breakdown compares the same kind of step on any CPU. Where oneDNN's fused kernels are
off (an AVX2-only CPU, or `TF_ENABLE_ONEDNN_OPTS=0`), ours is what `--jit_compile=auto` runs.

The traces are read by step_profile's `step_time_breakdown`: the same groups for both, so a
share of Keras's time that lands in `xla_forward_backward` is its one XLA program (forward,
backward and Adam's update together); ours, on the one device these run on, is one program too,
its group `xla_whole_step` (trainer/step/steps.py).
"""

from trainer.bench import step_profile
from trainer.bench import training as bench_training

KERAS_STEPS_PER_EXECUTION = 50


def keras_beside_ours(batch_size: int = bench_training.BATCH_SIZES[0]) -> dict:
    """Ours over Keras's XLA fit (median of paired rounds), and each one's profile."""
    ours = bench_training.cached_trainer("one_device", 1, batch_size, jit_compile="true")
    keras = bench_training.KerasTrainer(
        bench_training.bench_config(batch_size),
        KERAS_STEPS_PER_EXECUTION,
        feed="dataset",
        jit_compile=True,
    )
    rates = bench_training.measure(
        {"ours": ours, "keras": keras}, label=f"[profile_keras] batch {batch_size}"
    )
    b = f"b{batch_size}_"
    results = {f"{b}{name}_xla_examples_per_s": round(rates.median(name)) for name in rates}
    results[b + "ours_xla_over_keras_xla"] = rates.ratio("ours", "keras")
    for name, trainer in (("ours_xla", ours), ("keras_xla", keras)):
        profile = step_profile.step_time_breakdown(trainer)
        results.update(
            {f"{b}{name}_{measure.removeprefix(b)}": value for measure, value in profile.items()}
        )
    return results
