"""Loads TensorFlow as the terminal should show it (`terminal.load_tensorflow`): imported right
after trainer.common.terminal by an entry point that needs TensorFlow throughout."""

from trainer.common import terminal

terminal.load_tensorflow()
