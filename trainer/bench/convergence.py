"""Benchmark section: the compiled convergence suite against the seed notebook's eager loop.

The baseline is the notebook's own loop and optimizer classes, which the tests keep as their
reference (trainer/convergence/notebook.py). Both run the same
settings in this process, one after the other, and must agree on every run's outcome, iteration
and final x: a speed-up of different answers would mean nothing.
"""

import statistics
import time

from trainer.convergence import notebook
from trainer.convergence.settings import NOTEBOOK_OPTIMIZERS, SuiteSettings
from trainer.convergence.suite import ConvergenceSuite


def run(
    settings: SuiteSettings = SuiteSettings(optimizers=NOTEBOOK_OPTIMIZERS), repeats: int = 5
) -> dict:
    """Seconds for the whole suite, eager and compiled, and the speed-up.

    The compiled suite's first call also builds its variables, traces and instantiates the
    graph; later calls (the median of `repeats`) run it only.
    """
    start = time.perf_counter()
    eager = notebook.run_suite(
        settings.optimizers, settings.learning_rates, settings.init_val, settings.max_iters
    )
    eager_seconds = time.perf_counter() - start

    start = time.perf_counter()
    suite = ConvergenceSuite(settings.optimizers, settings.learning_rates)
    compiled = suite(settings.init_val, settings.max_iters)
    first_call_seconds = time.perf_counter() - start
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        suite(settings.init_val, settings.max_iters)
        seconds.append(time.perf_counter() - start)
    compiled_seconds = statistics.median(seconds)

    return {
        "eager_seconds": eager_seconds,
        "compiled_seconds_incl_first_trace": first_call_seconds,
        "compiled_seconds": compiled_seconds,
        "speedup": eager_seconds / compiled_seconds,
        "speedup_incl_first_trace": eager_seconds / first_call_seconds,
        "results_match": all(
            (eager[key].outcome, eager[key].iteration, eager[key].final)
            == (result.outcome, result.iteration, result.final)
            for key, result in compiled.items()
        ),
    }
