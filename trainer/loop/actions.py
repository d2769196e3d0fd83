"""The trainer's periodic actions, run by the controller between compiled runs of steps.

Each is one concern with its own cadence: the run's scalars, the graph, histograms, evaluation,
misclassified digits, the progress line, checkpoints, the preemption check and the profiler.
Only the chief writes: the writer is a no-op elsewhere, and actions that would only compute
something to write skip that work on other workers.
"""

import tensorflow as tf
from absl import logging

from data import mnist
from trainer.loop.controller import Action
from trainer.reporting.progress import Progress
from trainer.reporting.summaries import misclassified_grid, state_histograms
from trainer.reporting.tensorboard import MetricsWriter
from trainer.run.checkpoints import RunCheckpoints
from trainer.step.state import TrainState


class WriteTrainScalars(Action):
    """After every run: its loss and accuracy, the optimizer's measures and the speed."""

    every_run = True

    def __init__(self, writer: MetricsWriter):
        self.writer = writer

    def __call__(self, step, logs):
        train = logs["train"]
        self.writer.write_scalars(
            step,
            {
                "train/loss": train["loss"],
                "train/accuracy": train["accuracy"],
                "optim/learning_rate": train["learning_rate"],
                "optim/grad_norm": train["grad_norm"],
                "optim/param_norm": train["param_norm"],
                "perf/examples_per_sec": train["examples_per_sec"],
            },
        )
        if "clip_rate" in train:  # --clip_global_norm: the fraction of steps clipped.
            self.writer.write_scalars(step, {"optim/clip_rate": train["clip_rate"]})
        if "loss_scale" in train:  # mixed_float16's dynamic loss scaling.
            self.writer.write_scalars(
                step,
                {
                    "optim/loss_scale": train["loss_scale"],
                    "optim/skipped_steps": train["skipped_steps"],
                },
            )


class WriteGraph(Action):
    """The compiled train loop's graph, traced by its first call, for the Graphs tab."""

    every_run = True

    def __init__(self, writer: MetricsWriter):
        self.writer = writer

    def begin(self, step):
        tf.summary.trace_on(graph=True)

    def __call__(self, step, logs):
        self.writer.write_graph_trace(step, "train_loop")  # Once; later calls do nothing.

    def end(self, step):
        tf.summary.trace_off()


class WriteHistograms(Action):
    """Every layer's weights and every optimizer slot."""

    def __init__(self, every: int, state: TrainState, writer: MetricsWriter):
        self.every, self.state, self.writer = every, state, writer

    def __call__(self, step, logs):
        self.writer.write_histograms(step, state_histograms(self.state.model, self.state.optimizer))


class Evaluate(Action):
    """Loss and accuracy on a whole eval split; adds them to the logs as `name`. With a weight
    EMA, of both the weights (`tag`/...) and their averages (`tag`_ema/...), and the logs get
    the averages', which the run tests and exports."""

    def __init__(
        self,
        every: int,
        state: TrainState,
        dataset,
        num_batches: int,
        writer: MetricsWriter,
        name: str = "validation",
        tag: str = "eval",
    ):
        self.every, self.state, self.writer = every, state, writer
        self.dataset, self.num_batches, self.name, self.tag = dataset, num_batches, name, tag

    def __call__(self, step, logs):
        tags = {self.tag: False}  # Tag: whether it is of the averages.
        if self.state.ema_model:
            tags[f"{self.tag}_ema"] = True
        for tag, averaged in tags.items():
            logs[self.name] = self.state.evaluate(self.dataset, self.num_batches, averaged)
            self.writer.write_scalars(
                step, {f"{tag}/{key}": value for key, value in logs[self.name].items()}
            )


class WriteMisclassified(Action):
    """A grid of digits of `split` the model gets wrong, titled with both labels."""

    def __init__(self, every: int, state: TrainState, split: mnist.Split, writer: MetricsWriter):
        self.every, self.state, self.split, self.writer = every, state, split, writer

    def __call__(self, step, logs):
        if not self.writer.is_chief:
            return
        grid = misclassified_grid(self.state.final_model, self.split)
        if grid is not None:
            self.writer.write_images(step, {"eval/misclassified": grid})


class ReportProgress(Action):
    """The progress line after every run, and its finished form with validation scores."""

    every_run = True

    def __init__(self, progress: Progress):
        self.progress = progress

    def __call__(self, step, logs):
        train = logs["train"]
        self.progress.update(step, train, train["examples_per_sec"])
        if "validation" in logs:
            self.progress.end_epoch(step, train, train["examples_per_sec"], logs["validation"])


class SaveCheckpoint(Action):
    """A checkpoint at every multiple of any of `periods` (0s are left out)."""

    def __init__(self, periods: list[int], checkpoints: RunCheckpoints, writer: MetricsWriter):
        self.periods = [period for period in periods if period]
        self.checkpoints, self.writer = checkpoints, writer

    def next_due(self, step):
        return min((step // period + 1) * period for period in self.periods)

    def __call__(self, step, logs):
        logging.info("saved %s", self.checkpoints.save(step))
        self.writer.flush()  # TensorBoard shows what the checkpoint holds.


class SaveIfPreempted(Action):
    """After every run: on SIGTERM or Ctrl-C, a checkpoint of the steps completed (on every
    worker)."""

    every_run = True

    def __init__(self, stop_signals):
        self.stop_signals = stop_signals

    def __call__(self, step, logs):
        self.stop_signals.save_if_preempted(step)


class Profile(Action):
    """A profiler trace of steps [start, end) into the run's logdir (TensorBoard's Profile tab).

    Runs are cut at both steps, so the trace holds exactly those steps.
    """

    def __init__(self, logdir: str, start: int, end: int):
        self.logdir, self.start, self.stop = logdir, start, end
        self.active = False

    def next_due(self, step):
        return next((s for s in (self.start, self.stop) if s > step), None)

    def begin(self, step):
        self(step, {})

    def __call__(self, step, logs):
        if not self.active and self.start <= step < self.stop:
            tf.profiler.experimental.start(self.logdir)
            self.active = True
        elif self.active and step >= self.stop:
            self.end(step)

    def end(self, step):
        if self.active:
            tf.profiler.experimental.stop()
            self.active = False
