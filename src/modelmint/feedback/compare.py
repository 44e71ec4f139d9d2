"""Versions of one model side by side: what users said and what they earned.

Per version: the feedback score mean with a 95% confidence interval (normal
approximation, ``mean +- 1.96 * sd / sqrt(n)``), the offline evaluation metrics stored
at registration, latency and error rate, and revenue, cost and margin per 1,000
requests (``analytics.breakdown`` by version, from the rollups the metering writer
keeps). The recommendation compares the newest version listed (the candidate) with
the oldest (the baseline) and states the rule it applied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.analytics.breakdown import BreakdownRow, Dimension, breakdown
from modelmint.billing.periods import Period
from modelmint.errors import InvalidRequest
from modelmint.registry.versions import resolve
from modelmint.storage.db import utcnow
from modelmint.storage.tables import Feedback, ModelVersion

__all__ = [
    "MIN_RATINGS",
    "Comparison",
    "Recommendation",
    "ScoreStats",
    "VersionReport",
    "compare_versions",
    "recommend",
    "score_stats",
]

# Fewer ratings than this per version and the interval is too wide to act on.
MIN_RATINGS = 10
# z of a two-sided 95% interval.
_Z95 = 1.96
# A candidate may cost this much margin per 1k requests and still be promoted on quality.
_MARGIN_TOLERANCE = Decimal("0.10")
# Error-rate increase (absolute) that rolls a candidate back whatever users say.
_ERROR_RATE_SLACK = Decimal("0.02")
_PER = Decimal(1000)


@dataclass(frozen=True, slots=True)
class ScoreStats:
    count: int
    mean: float | None
    low: float | None  # 95% interval bounds; None with fewer than two ratings
    high: float | None


@dataclass(frozen=True, slots=True)
class VersionReport:
    version: int
    version_id: str
    score: ScoreStats
    metrics: dict[str, float]
    requests: int
    errors: int
    error_rate: Decimal | None
    avg_latency_ms: Decimal | None
    revenue: Decimal
    cost: Decimal
    margin: Decimal
    currency: str

    def per_1k(self, amount: Decimal) -> Decimal | None:
        total = self.requests + self.errors
        return None if total == 0 else (amount * _PER / total).quantize(Decimal("0.000001"))


@dataclass(frozen=True, slots=True)
class Recommendation:
    action: str  # promote, keep or roll back
    rule: str  # the rule that decided, in words
    reason: str  # the numbers it saw


@dataclass(frozen=True, slots=True)
class Comparison:
    model: str
    period: Period
    versions: tuple[VersionReport, ...]
    recommendation: Recommendation


def score_stats(scores: list[float]) -> ScoreStats:
    n = len(scores)
    if n == 0:
        return ScoreStats(0, None, None, None)
    mean = sum(scores) / n
    if n < 2:
        return ScoreStats(n, mean, None, None)
    variance = sum((s - mean) ** 2 for s in scores) / (n - 1)
    half = _Z95 * math.sqrt(variance / n)
    return ScoreStats(n, mean, mean - half, mean + half)


def _scores(session: Session, version_id: str) -> list[float]:
    query = select(Feedback.score).where(
        Feedback.model_version_id == version_id, Feedback.score.is_not(None)
    )
    return [float(s) for s in session.scalars(query) if s is not None]


def _offline_metrics(version: ModelVersion) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (version.metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _report(
    session: Session, version: ModelVersion, row: BreakdownRow | None, currency: str
) -> VersionReport:
    row = row or BreakdownRow(key=version.id, label="")
    return VersionReport(
        version=version.version,
        version_id=version.id,
        score=score_stats(_scores(session, version.id)),
        metrics=_offline_metrics(version),
        requests=row.requests,
        errors=row.errors,
        error_rate=row.error_rate,
        avg_latency_ms=row.avg_latency_ms,
        revenue=row.revenue,
        cost=row.cost,
        margin=row.margin,
        currency=currency,
    )


def compare_versions(
    session: Session, model: str, versions: list[int], *, period: Period | None = None
) -> Comparison:
    """Compare ``versions`` of the registered model ``model`` over ``period`` (default:
    since the oldest of them was registered)."""
    if len(versions) < 2:
        raise InvalidRequest("compare needs at least two versions, e.g. --versions 1,2")
    rows = [resolve(session, f"{model}@{v}")[1] for v in sorted(set(versions))]
    if period is None:
        start = min(r.created_at for r in rows) - timedelta(hours=1)
        period = Period(start, utcnow() + timedelta(hours=1))
    sums = breakdown(session, period, Dimension.VERSION)
    by_id = {r.key: r for r in sums.rows}
    reports = tuple(_report(session, r, by_id.get(r.id), sums.currency) for r in rows)
    return Comparison(model, period, reports, recommend(reports[0], reports[-1]))


def recommend(baseline: VersionReport, candidate: VersionReport) -> Recommendation:
    """Promote, keep or roll back ``candidate`` against ``baseline``."""
    rule = (
        f"roll back if the candidate's error rate exceeds the baseline's by more than "
        f"{_ERROR_RATE_SLACK:%} or its score's 95% interval lies wholly below the baseline "
        f"mean; promote if its interval lies wholly above the baseline mean and its margin "
        f"per 1k requests is at most {_MARGIN_TOLERANCE:%} lower; otherwise keep (and keep "
        f"while either version has fewer than {MIN_RATINGS} ratings)"
    )
    b, c = baseline.score, candidate.score
    numbers = (
        f"v{candidate.version} score {_fmt(c.mean)} [{_fmt(c.low)}, {_fmt(c.high)}] n={c.count}"
        f" vs v{baseline.version} {_fmt(b.mean)} n={b.count}"
    )
    if _error_rate(candidate) - _error_rate(baseline) > _ERROR_RATE_SLACK:
        return Recommendation("roll back", rule, f"error rate: {numbers}")
    if b.count < MIN_RATINGS or c.count < MIN_RATINGS or b.mean is None:
        return Recommendation("keep", rule, f"too few ratings: {numbers}")
    assert c.low is not None and c.high is not None  # two or more ratings
    if c.high < b.mean:
        return Recommendation("roll back", rule, f"worse score: {numbers}")
    if c.low > b.mean and _margin_ok(baseline, candidate):
        return Recommendation("promote", rule, f"better score: {numbers}")
    return Recommendation("keep", rule, f"no clear difference: {numbers}")


def _error_rate(report: VersionReport) -> Decimal:
    return report.error_rate if report.error_rate is not None else Decimal(0)


def _margin_ok(baseline: VersionReport, candidate: VersionReport) -> bool:
    base, new = baseline.per_1k(baseline.margin), candidate.per_1k(candidate.margin)
    if base is None or new is None:
        return True
    return new >= base - abs(base) * _MARGIN_TOLERANCE


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
