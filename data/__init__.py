"""MNIST for the trainer: the bundled copy (build_mnist.py makes it) and its pipelines (mnist.py).

`SOURCES`, the values of `--data_source`, live here, apart from mnist.py and TensorFlow, so the
trainer's config checks the flag without loading either.
"""

SOURCES = ("auto", "tfds", "bundled")
