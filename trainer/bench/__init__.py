"""`make bench`: `python -m trainer.bench` (see __main__.py) runs these sections.

training.py      our compiled loop against Keras, across replicas, the matmul ceiling, time to
                 accuracy and memory
step_profile.py  where a step's time goes, read from a profiler trace
convergence.py   the compiled convergence suite against the notebook's eager loop
"""
