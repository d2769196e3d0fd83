"""Distribution: the strategy a run uses, the workers of a job, and Slurm's view of them."""

from trainer.common.errors import OneLineError


class StrategyError(OneLineError):
    """A strategy setting that cannot work on this machine; the message names the flag."""
