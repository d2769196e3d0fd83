"""Launchers: many runs of the trainer (sweep.py), or one run as several worker processes on this
machine (local.py) or on a Kubernetes cluster (kubernetes.py).

The job launchers start the real `python -m trainer.train` as it is and never train anything
themselves, so a run launched here is the same run, resumable the same way, as one started by
hand.
"""
