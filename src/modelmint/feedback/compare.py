"""Versions of one model side by side: what users said and what they earned.

Per version: the feedback score mean with a 95% confidence interval (normal
approximation, ``mean +- 1.96 * sd / sqrt(n)``, clipped to the scale's range: thumbs
0-1, stars 1-5), the offline evaluation metrics stored at registration (each measured
on its own test split), latency and the model's error rate, and revenue, cost and
margin per 1,000 requests (``analytics.breakdown`` by version, from the rollups the
metering writer keeps). Errors are the model's own failures (5xx); a client's 4xx is
counted apart and never makes a version look worse. On request, every classifier
version is also measured on one shared set of held-out rows (``training.holdout``),
the only offline numbers that compare like with like. The recommendation compares the
newest version listed (the candidate) with the oldest (the baseline) and states the
rule it applied.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelmint.analytics.breakdown import BreakdownRow, Dimension, breakdown
from modelmint.analytics.ratios import ratio
from modelmint.analytics.windows import ceil_hour
from modelmint.billing.periods import Period
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, ModelMintError
from modelmint.feedback.datasets import resolve_dataset
from modelmint.registry.versions import resolve
from modelmint.storage.tables import Feedback, ModelVersion, UsageRecord
from modelmint.training.holdout import HeldOut, interval95, measure_on_held_out

__all__ = [
    "MIN_RATINGS",
    "Comparison",
    "Recommendation",
    "ScoreStats",
    "VersionReport",
    "compare_versions",
    "recommend",
    "scale_of",
    "score_stats",
]

# Fewer ratings than this per version and the interval is too wide to act on.
MIN_RATINGS = 10
# The range each kind of score can take; a numeric score has none.
_SCALES: dict[str, tuple[float, float] | None] = {
    "thumbs": (0.0, 1.0),
    "stars": (1.0, 5.0),
    "numeric": None,
}
# Status codes from here up are the model's (or its serving's) failures; below, the
# client's request was refused (bad input, no credit, over a limit).
_MODEL_ERROR_STATUS = 500
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
    requests: int  # answered
    errors: int  # the model's own failures (5xx)
    error_rate: Decimal | None  # errors / (answered + errors)
    avg_latency_ms: Decimal | None
    revenue: Decimal
    cost: Decimal
    margin: Decimal
    currency: str
    client_errors: int = 0  # requests refused for the client's reasons (4xx)

    def per_1k(self, amount: Decimal) -> Decimal | None:
        total = self.requests + self.errors + self.client_errors
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
    # Every version measured on the same held-out rows (when asked for and possible),
    # else why not.
    held_out: HeldOut | None = None
    held_out_note: str | None = None


def score_stats(scores: list[float], bounds: tuple[float, float] | None = None) -> ScoreStats:
    """Count, mean and 95% interval of ``scores``, the interval kept within ``bounds``."""
    mean, low, high = interval95(scores, bounds)
    return ScoreStats(len(scores), mean, low, high)


def scale_of(kinds: Collection[str]) -> tuple[float, float] | None:
    """The range scores of ``kinds`` can take together (None: unbounded)."""
    scales = [_SCALES.get(kind) for kind in kinds]
    if not scales or any(scale is None for scale in scales):
        return None
    bounded = [scale for scale in scales if scale is not None]
    return min(low for low, _ in bounded), max(high for _, high in bounded)


def _score_stats(session: Session, version_id: str) -> ScoreStats:
    query = select(Feedback.score, Feedback.score_kind).where(
        Feedback.model_version_id == version_id, Feedback.score.is_not(None)
    )
    rows = [(float(score), kind) for score, kind in session.execute(query) if score is not None]
    return score_stats([score for score, _ in rows], scale_of({kind for _, kind in rows}))


def _model_errors(session: Session, period: Period, version_ids: list[str]) -> dict[str, int]:
    """5xx answers per version over the hours the rollups count for ``period``."""
    query = (
        select(UsageRecord.model_version_id, func.count())
        .where(
            UsageRecord.model_version_id.in_(version_ids),
            UsageRecord.status_code >= _MODEL_ERROR_STATUS,
            UsageRecord.created_at >= ceil_hour(period.start),
            UsageRecord.created_at < ceil_hour(period.end),
        )
        .group_by(UsageRecord.model_version_id)
    )
    return {str(version_id): int(n) for version_id, n in session.execute(query)}


def _offline_metrics(version: ModelVersion) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in (version.metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def _report(
    session: Session,
    version: ModelVersion,
    row: BreakdownRow | None,
    model_errors: int,
    currency: str,
) -> VersionReport:
    row = row or BreakdownRow(key=version.id, label="")
    # The rollups count every non-2xx as an error; only the 5xx are the model's.
    errors = min(model_errors, row.errors)
    return VersionReport(
        version=version.version,
        version_id=version.id,
        score=_score_stats(session, version.id),
        metrics=_offline_metrics(version),
        requests=row.requests,
        errors=errors,
        error_rate=ratio(errors, row.requests + errors, places=4),
        avg_latency_ms=row.avg_latency_ms,
        revenue=row.revenue,
        cost=row.cost,
        margin=row.margin,
        currency=currency,
        client_errors=row.errors - errors,
    )


def compare_versions(
    session: Session,
    model: str,
    versions: list[int],
    *,
    period: Period | None = None,
    held_out: bool = False,
    eval_data: str | None = None,
) -> Comparison:
    """Compare ``versions`` of the registered model ``model`` over ``period`` (default:
    since the oldest of them was registered).

    With ``held_out`` (or ``eval_data``), also measure every version on the same
    held-out rows: the oldest version's test split, or every row of ``eval_data``. A
    comparison that cannot be measured that way says why in ``held_out_note``; rows
    named by ``eval_data`` that cannot be used are an error."""
    if len(versions) < 2:
        raise InvalidRequest("compare needs at least two versions, e.g. --versions 1,2")
    rows = [resolve(session, f"{model}@{v}")[1] for v in sorted(set(versions))]
    if period is None:
        start = min(r.created_at for r in rows) - timedelta(hours=1)
        period = Period(start, utcnow() + timedelta(hours=1))
    sums = breakdown(session, period, Dimension.VERSION)
    by_id = {r.key: r for r in sums.rows}
    failures = _model_errors(session, period, [r.id for r in rows])
    reports = tuple(
        _report(session, r, by_id.get(r.id), failures.get(r.id, 0), sums.currency) for r in rows
    )
    measured, note = None, None
    if held_out or eval_data is not None:
        measured, note = _held_out(session, rows, eval_data)
    return Comparison(model, period, reports, recommend(reports[0], reports[-1]), measured, note)


def _held_out(
    session: Session, rows: list[ModelVersion], eval_data: str | None
) -> tuple[HeldOut | None, str | None]:
    def resolve_data(source: str) -> str:
        return resolve_dataset(session, source).path if source.startswith("dataset:") else source

    try:
        return measure_on_held_out(rows, resolve_data=resolve_data, eval_data=eval_data), None
    except ModelMintError as exc:
        if eval_data is not None:
            raise
        return None, f"not measured on shared held-out rows: {exc.message}"


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
