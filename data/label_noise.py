"""Noisy training labels, for measuring how a method copes with them (SAM's gains are reported
largest under label noise: Baek et al., "Why is SAM robust to label noise?", 2024)."""

import dataclasses

import numpy as np

from data.mnist import NUM_CLASSES, Mnist, Split


def with_label_noise(data: Mnist, fraction: float, seed: int) -> Mnist:
    """`data` with `fraction` of its training labels, picked by `seed`, each replaced by one of
    the other nine classes (uniformly); validation and test labels are left as they are."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the label noise fraction must be in [0, 1], got {fraction!r}")
    if not fraction:
        return data
    labels = data.train.labels.copy()
    rng = np.random.default_rng([seed, 0x1ABE1])  # Its own stream: the run's seed, not its use.
    flipped = rng.choice(len(labels), size=round(fraction * len(labels)), replace=False)
    shifts = rng.integers(1, NUM_CLASSES, size=len(flipped))
    labels[flipped] = (labels[flipped] + shifts) % NUM_CLASSES
    return dataclasses.replace(data, train=Split(data.train.images, labels))
