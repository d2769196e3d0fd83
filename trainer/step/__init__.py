"""The computation: the model's train state, the compiled train and eval steps, their inputs."""
