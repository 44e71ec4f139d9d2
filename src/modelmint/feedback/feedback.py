"""Customers' ratings of served requests, and the summaries a model card shows.

A rating names a request: the ``req_...`` id of ``usage_records`` (the X-Request-ID
header), or the ``id`` of the response body the SDKs return (``chatcmpl-...``,
``cmpl-...``), which is that request id under another prefix. Only the organisation
that made the request may rate it, and rating it again replaces the earlier rating.
Every kind of score is also kept as one number (thumbs: 1 up, 0 down; stars: 1-5;
numeric: as given) so versions can be compared on a mean; categorical scores keep
only a label. A rating may carry a short free-text comment.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, NotFound
from modelmint.storage.tables import Feedback, UsageRecord
from modelmint.training.cards import FeedbackSummary, ScorePoint

__all__ = [
    "MAX_COMMENT_CHARS",
    "SCORE_KINDS",
    "FeedbackGiven",
    "ScoreKind",
    "feedback_summary",
    "normalise_score",
    "record_feedback",
    "request_id_of",
]

ScoreKind = Literal["thumbs", "stars", "numeric", "categorical"]
SCORE_KINDS: tuple[ScoreKind, ...] = ("thumbs", "stars", "numeric", "categorical")
_THUMBS = {"up": 1.0, "down": 0.0, "true": 1.0, "false": 0.0}
# Trends show the most recent periods; older ones add little to a card.
_TREND_DAYS = 14
_TOP_CORRECTIONS = 10
_RECENT_COMMENTS = 10
# A comment says why in a sentence or a paragraph; a longer text belongs elsewhere.
MAX_COMMENT_CHARS = 2000
# The gateway names a chat or completion answer ``chatcmpl-`` / ``cmpl-`` followed by the
# request id without its ``req_`` (inference.envelope): swapping the prefix back finds the
# request with no lookup table to keep, so the request path stays as it is.
_RESPONSE_ID_PREFIXES = ("chatcmpl-", "cmpl-")
_REQUEST_ID_PREFIX = "req_"
_ACCEPTED_IDS = (
    "the response's id (chatcmpl-... or cmpl-... for chat and completions, req_... for "
    "classifications and recommendations) or its X-Request-ID header (req_...)"
)


@dataclass(frozen=True, slots=True)
class FeedbackGiven:
    """What a caller said about one request."""

    request_id: str
    score: bool | int | float | str
    kind: ScoreKind | None = None  # None: inferred from the score's type
    name: str = "score"
    corrected_output: str | None = None
    corrected_label: str | None = None
    comment: str | None = None


def request_id_of(given: str) -> str:
    """The request id a response id stands for (``chatcmpl-X`` and ``cmpl-X`` -> ``req_X``);
    any other id is returned as it is."""
    for prefix in _RESPONSE_ID_PREFIXES:
        if given.startswith(prefix) and len(given) > len(prefix):
            return _REQUEST_ID_PREFIX + given.removeprefix(prefix)
    return given


def _comment(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    if len(text) > MAX_COMMENT_CHARS:
        raise InvalidRequest(
            f"a comment is at most {MAX_COMMENT_CHARS} characters, not {len(text)}",
            param="comment",
        )
    return text.strip()


def _infer_kind(score: bool | int | float | str) -> ScoreKind:
    if isinstance(score, bool) or (isinstance(score, str) and score.lower() in _THUMBS):
        return "thumbs"
    if isinstance(score, str):
        return "categorical"
    if isinstance(score, int):
        return "stars"
    return "numeric"


def normalise_score(
    score: bool | int | float | str, kind: ScoreKind | None
) -> tuple[ScoreKind, float | None, str | None]:
    """The kind, the comparable number and the category label of a score, or a 400."""
    kind = kind or _infer_kind(score)
    if kind == "thumbs":
        if isinstance(score, bool):
            return kind, 1.0 if score else 0.0, None
        if isinstance(score, str) and score.lower() in _THUMBS:
            return kind, _THUMBS[score.lower()], None
        if isinstance(score, int | float) and score in (0, 1):
            return kind, float(score), None
        raise InvalidRequest("a thumbs score is true/false, 'up'/'down' or 1/0", param="score")
    if kind == "stars":
        if isinstance(score, bool) or not isinstance(score, int | float) or score != int(score):
            raise InvalidRequest("a stars score is a whole number from 1 to 5", param="score")
        if not 1 <= score <= 5:
            raise InvalidRequest(f"a stars score is 1 to 5, not {score}", param="score")
        return kind, float(score), None
    if kind == "numeric":
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise InvalidRequest("a numeric score is a number", param="score")
        if not math.isfinite(score):
            raise InvalidRequest("a numeric score must be finite", param="score")
        return kind, float(score), None
    if not isinstance(score, str) or not score.strip() or len(score) > 200:
        raise InvalidRequest("a categorical score is a label of 1-200 characters", param="score")
    return kind, None, score.strip()


def record_feedback(
    session: Session, organization_id: str, api_key_id: str, given: FeedbackGiven
) -> Feedback:
    """Store (or replace) the rating of one of ``organization_id``'s requests."""
    kind, number, label = normalise_score(given.score, given.kind)
    comment = _comment(given.comment)
    request_id = request_id_of(given.request_id)
    usage = session.get(UsageRecord, request_id)
    # Another organisation's request is reported exactly like a missing one.
    if usage is None or usage.organization_id != organization_id:
        raise NotFound(
            f"no request {given.request_id!r} of yours was found; give {_ACCEPTED_IDS}",
            param="request_id",
        )
    now = utcnow()
    row = session.get(Feedback, request_id)
    if row is None:
        row = Feedback(request_id=request_id, created_at=now)
        session.add(row)
    row.organization_id = organization_id
    row.api_key_id = api_key_id
    row.model = usage.model
    row.model_version_id = usage.model_version_id
    row.score_name = given.name
    row.score_kind = kind
    row.score = number
    row.label = label
    row.corrected_output = given.corrected_output
    row.corrected_label = given.corrected_label
    row.comment = comment
    row.updated_at = now
    session.flush()
    return row


def feedback_summary(
    session: Session, model_version_id: str, *, since: datetime | None = None
) -> FeedbackSummary:
    """Volume, mean, daily trend and most common corrections of one version's ratings."""
    query = select(Feedback).where(Feedback.model_version_id == model_version_id)
    if since is not None:
        query = query.where(Feedback.updated_at >= since)
    rows = list(session.scalars(query))
    scores = [r.score for r in rows if r.score is not None]
    by_day: dict[str, list[float]] = {}
    for row in rows:
        if row.score is not None:
            by_day.setdefault(row.updated_at.date().isoformat(), []).append(row.score)
    trend = [
        ScorePoint(day, sum(values) / len(values), len(values))
        for day, values in sorted(by_day.items())[-_TREND_DAYS:]
    ]
    corrections = Counter(
        r.corrected_label or r.corrected_output or ""
        for r in rows
        if r.corrected_label or r.corrected_output
    )
    kinds = {r.score_kind for r in rows}
    commented = sorted(
        (r for r in rows if r.comment), key=lambda r: (r.updated_at, r.request_id), reverse=True
    )
    return FeedbackSummary(
        volume=len(rows),
        mean_score=sum(scores) / len(scores) if scores else None,
        trend=trend,
        corrections=corrections.most_common(_TOP_CORRECTIONS),
        scale=_scale(kinds),
        comments=[r.comment for r in commented[:_RECENT_COMMENTS] if r.comment],
    )


def _scale(kinds: set[str]) -> str:
    if kinds == {"thumbs"}:
        return "thumbs (1 = up)"
    if kinds == {"stars"}:
        return "1-5"
    return ""
