"""The train state and its batches, positioned at a checkpoint: where a run starts, and where
it goes back to when training diverges."""

from absl import logging

from trainer.run.checkpoints import RunCheckpoints
from trainer.step.inputs import Inputs
from trainer.step.state import DivergenceError, TrainState


class Resumable:
    """The train state and its batches, positioned at the newest readable checkpoint: where a
    run starts, and where it goes back to when a compiled run of steps diverges."""

    def __init__(
        self, state: TrainState, inputs: Inputs, checkpoints: RunCheckpoints, retries: int
    ):
        self.state, self.inputs, self.checkpoints = state, inputs, checkpoints
        self.retries_left = retries
        self.batches = self.restored_from = None

    def resume(self) -> int:
        """Restores the chief's newest readable checkpoint (if any); returns its step, in steps
        taken (`TrainState.step`: with loss scaling, the skipped ones too)."""
        self._restore()
        self.batches = self.inputs.train_batches(self.state.data_position)
        return self.state.step

    def train(self, step: int, num_steps: int) -> dict:
        return self.state.train(self.batches, num_steps)

    def recover(self, error: DivergenceError) -> int:
        """Back to the last good checkpoint (nothing of the failed run was saved), past the
        batches that diverged, as large runs do; raises DivergenceError once the retries are
        spent. Every worker decides alike: they all met the same non-finite values (gradients
        are summed across them) and restore the checkpoint the chief picks."""
        if not self.retries_left:
            raise DivergenceError(
                f"{error}; stopping. The run's checkpoints hold no NaN: "
                "the last one is where to go on from.",
                error.step,
            ) from None
        self.retries_left -= 1
        logging.warning(
            "%s; restoring the last good checkpoint (%d retries left)", error, self.retries_left
        )
        self._restore()
        if self.restored_from is None:
            raise DivergenceError(
                f"{error}; stopping: no checkpoint to go back to "
                "(--checkpoint_every_steps saves more often)",
                error.step,
            ) from None
        # Replaying the same batches from the same weights would diverge again.
        first, last = self.state.step + 1, max(error.step, self.state.step + 1)
        self.state.skip_window(first, last)
        logging.warning(
            "skipping the batches of steps %d-%d, on which training diverged", first, last
        )
        self.batches = self.inputs.train_batches(self.state.data_position)
        return self.state.step

    def _restore(self) -> None:
        path = self.restored_from = self.checkpoints.restore()
        if path:
            logging.info("resumed from %s at step %d", path, self.state.step)
