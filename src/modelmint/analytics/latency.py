"""Latency percentiles estimated from the rollups' fixed-bucket histogram.

A percentile falls in the first bucket whose running count reaches it, and is placed
inside that bucket by linear interpolation between the bucket's bounds (the way
Prometheus' ``histogram_quantile`` does). It is therefore an estimate, within the
width of one bucket of the true value. In the last, open-ended bucket the estimate
is the largest finite bound: "at least this slow".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from fractions import Fraction

from modelmint.metering.rollups import LATENCY_BUCKETS_MS, LATENCY_OVERFLOW_MS

__all__ = ["merge", "percentile"]

# Each bucket's lower bound: the bound of the bucket below it (0 for the first).
_LOWER = dict(zip(LATENCY_BUCKETS_MS, (0, *LATENCY_BUCKETS_MS[:-1]), strict=True))


def percentile(histogram: Counter[int], quantile: Fraction) -> int | None:
    """The ``quantile`` (0..1) of the latencies in ``histogram``, in whole ms; None if empty.

    ``histogram`` maps bucket upper bounds (``LATENCY_BUCKETS_MS`` or the overflow
    bound) to request counts.
    """
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be within 0..1, got {quantile}")
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = quantile * total
    seen = 0
    for upper in sorted(histogram):
        count = histogram[upper]
        if count and seen + count >= rank:
            if upper == LATENCY_OVERFLOW_MS:
                return LATENCY_BUCKETS_MS[-1]
            inside = (rank - seen) / count
            lower = _LOWER.get(upper, 0)
            return round(lower + inside * (upper - lower))
        seen += count
    return LATENCY_BUCKETS_MS[-1]  # pragma: no cover - the loop reaches the total


def merge(histograms: Iterable[Counter[int]]) -> Counter[int]:
    """One histogram of several (e.g. every model's)."""
    merged: Counter[int] = Counter()
    for histogram in histograms:
        merged.update(histogram)
    return merged
