"""Benchmark section `one_program`: the whole step as one XLA program against the same step in
pieces, on one replica.

    one_program  examples/s at global batch 128 and 1024 of our trainer (one device, its input
                 pipeline) with `--jit_compile=true` as one program (the trainer's step on one
                 replica), the same in pieces (forward and backward one program, each
                 variable's update another, the norm, the finiteness check and the rest op by
                 op between them: the step of several replicas), and without XLA (what
                 `--jit_compile=auto` takes where oneDNN's fused kernels are on)

What the pieces cost is what several replicas pay, since there the step cannot be one program
(steps.py says why). Run it under `TF_ENABLE_ONEDNN_OPTS=0` as well: the comparison with the
step without XLA is what `--jit_compile=auto`'s rule (step/machine_fit.py) rests on.
"""

import tensorflow as tf

from trainer.bench.training import BATCH_SIZES, OurTrainer, bench_config, measure
from trainer.distribution import strategies
from trainer.step.state import build_train_state


class InPieces(OurTrainer):
    """Our trainer with the step XLA compiles in pieces, as several replicas run it."""

    def __init__(self, strategy: tf.distribute.Strategy, config):
        super().__init__(strategy, config)
        self.state = build_train_state(strategy, config, self.steps_per_epoch, one_program=False)


def one_program() -> dict:
    results = {}
    strategy = strategies.create_strategy("one_device")
    for batch_size in BATCH_SIZES:
        xla = bench_config(batch_size, jit_compile="true")
        rates = measure(
            {
                "one_program": OurTrainer(strategy, xla),
                "in_pieces": InPieces(strategy, xla),
                "no_xla": OurTrainer(strategy, bench_config(batch_size, jit_compile="false")),
            },
            label=f"[one_program] batch {batch_size}",
        )
        b = f"b{batch_size}_"
        results.update({f"{b}{name}_examples_per_s": round(rates.median(name)) for name in rates})
        results[b + "one_program_over_in_pieces"] = rates.ratio("one_program", "in_pieces")
        results[b + "one_program_over_no_xla"] = rates.ratio("one_program", "no_xla")
        results[b + "in_pieces_over_no_xla"] = rates.ratio("in_pieces", "no_xla")
    return results
