"""`make bench`: `python -m trainer.bench` (see __main__.py) runs these sections.

training.py      our compiled loop against Keras, across replicas, the matmul ceiling, time to
                 accuracy and memory
precision.py     --precision and --jit_compile: speed against Keras in float32 and bfloat16, what
                 bfloat16 gains or costs against float32, the share of each dtype's matmul
                 peak, and the accuracy each precision reaches
step_profile.py  where a step's time goes, read from a profiler trace
convergence.py   the compiled convergence suite against the notebook's eager loop

The machine they ran on (CPU, instruction sets, TensorFlow and oneDNN) is described by
trainer/common/machine.py, which the trainer reads too.
"""
