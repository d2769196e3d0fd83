"""The training loop: the controller, the actions it runs between steps, and how it stops."""
