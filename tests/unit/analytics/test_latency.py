"""Latency percentiles from the fixed-bucket histogram."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest

from modelmint.analytics.latency import merge, percentile
from modelmint.metering.rollups import LATENCY_BUCKETS_MS, LATENCY_OVERFLOW_MS, latency_bucket


def histogram(latencies: list[int]) -> Counter[int]:
    return Counter(latency_bucket(ms) for ms in latencies)


def test_buckets_hold_their_upper_bound_and_overflow_past_the_last() -> None:
    assert latency_bucket(0) == 5 and latency_bucket(5) == 5 and latency_bucket(6) == 10
    assert latency_bucket(LATENCY_BUCKETS_MS[-1] + 1) == LATENCY_OVERFLOW_MS


@pytest.mark.parametrize("seed", range(5))
def test_the_estimate_lies_in_the_bucket_of_the_true_percentile(seed: int) -> None:
    rng = random.Random(seed)
    latencies = sorted(int(rng.lognormvariate(5, 1.2)) for _ in range(2000))
    counts = histogram(latencies)
    for q in (Fraction(1, 2), Fraction(95, 100)):
        true = latencies[int(q * len(latencies)) - 1]
        upper = latency_bucket(true)
        lower = max([0, *(b for b in LATENCY_BUCKETS_MS if b < upper)])
        estimate = percentile(counts, q)
        assert estimate is not None and lower <= estimate <= min(upper, LATENCY_BUCKETS_MS[-1])


def test_interpolation_inside_a_bucket() -> None:
    # Ten answers between 50 and 75 ms: the median sits halfway through that bucket.
    assert percentile(Counter({75: 10}), Fraction(1, 2)) == 62  # 50 + 25 * 5/10 -> 62.5, even
    assert percentile(Counter({75: 10}), Fraction(1)) == 75
    assert percentile(Counter({LATENCY_OVERFLOW_MS: 3}), Fraction(1, 2)) == LATENCY_BUCKETS_MS[-1]


def test_empty_and_merged_histograms() -> None:
    assert percentile(Counter(), Fraction(1, 2)) is None
    assert merge([Counter({5: 1}), Counter({5: 2, 10: 1})]) == Counter({5: 3, 10: 1})
    with pytest.raises(ValueError):
        percentile(Counter({5: 1}), Fraction(3, 2))
