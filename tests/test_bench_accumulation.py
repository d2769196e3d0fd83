"""The accumulation benchmark: its measures, from a process per K, on a small batch."""

import pytest

from trainer.bench.accumulation import memory_and_speed

pytestmark = pytest.mark.slow  # Starts a process per K.


def test_it_reports_each_ks_memory_and_speed_and_their_ratios():
    measured = memory_and_speed(batch_size=2048, steps=2, ks=(1, 4))
    assert set(measured) == {
        *(
            f"k{k}_{name}"
            for k in (1, 4)
            for name in ("peak_rss_mb", "training_rss_mb", "examples_per_sec")
        ),
        "k4_over_k1_training_rss",
        "k4_over_k1_seconds_per_example",
    }
    for k in (1, 4):
        assert 0 < measured[f"k{k}_training_rss_mb"] < measured[f"k{k}_peak_rss_mb"]
        assert measured[f"k{k}_examples_per_sec"] > 0
    assert measured["k4_over_k1_training_rss"] == pytest.approx(
        measured["k4_training_rss_mb"] / measured["k1_training_rss_mb"]
    )
