"""Quality of service per model: traffic, failures and latency percentiles.

Counts come from the usage rollups (every currency: this is about service, not
money), percentiles from the latency histogram (``latency.percentile``: estimates
within one bucket of the truth, over answered requests).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from sqlalchemy.orm import Session

from modelmint.analytics.latency import percentile
from modelmint.analytics.ratios import ratio
from modelmint.analytics.rollups import latency_counts, read_sums
from modelmint.billing.periods import Period

__all__ = ["ModelQuality", "model_quality"]

_P50, _P95, _P99 = Fraction(1, 2), Fraction(95, 100), Fraction(99, 100)


@dataclass(frozen=True, slots=True)
class ModelQuality:
    """One model's service over a window; latencies in ms, None when nothing answered."""

    model: str
    requests: int
    errors: int
    tokens: int
    latency_ms_total: int
    p50_ms: int | None
    p95_ms: int | None
    p99_ms: int | None

    @property
    def error_rate(self) -> Decimal | None:
        """Failed share of all requests (0..1, 4 decimals)."""
        return ratio(self.errors, self.requests + self.errors, places=4)

    @property
    def avg_latency_ms(self) -> Decimal | None:
        return ratio(self.latency_ms_total, self.requests + self.errors, places=1)


def model_quality(session: Session, period: Period) -> tuple[ModelQuality, ...]:
    """Returns one ``ModelQuality`` per model used in ``period``, busiest first."""
    sums = read_sums(session, period, ("model",), currency=None)
    histograms = latency_counts(session, period)
    rows = []
    for model in {key[0] for key in sums} | set(histograms):
        measured = sums.get((model,))
        histogram = histograms.get(model, Counter())
        rows.append(
            ModelQuality(
                model=model,
                requests=measured.requests if measured else 0,
                errors=measured.errors if measured else 0,
                tokens=(
                    measured.input_tokens + measured.output_tokens + measured.embedding_tokens
                    if measured
                    else 0
                ),
                latency_ms_total=measured.latency_ms if measured else 0,
                p50_ms=percentile(histogram, _P50),
                p95_ms=percentile(histogram, _P95),
                p99_ms=percentile(histogram, _P99),
            )
        )
    rows.sort(key=lambda r: (-(r.requests + r.errors), r.model))
    return tuple(rows)
