"""The optimizer convergence suite: `python -m trainer.convergence` (see __main__.py).

settings.py  what a suite run is, and the logdir check: plain data, checked before TensorFlow loads
suite.py     the seed notebook's test, compiled into one loop, with TensorBoard output
plots.py     the notebook's pictures
notebook.py  the notebook's own eager loop and optimizers: the reference the suite is checked
             and benchmarked against
"""
