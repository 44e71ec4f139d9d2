"""``POST /v1/feedback``: a caller rates one of its own requests, named by the response's
``id`` (``chatcmpl-...``, ``cmpl-...``, ``req_...``) or its X-Request-ID header.

The route is a thin adapter around ``feedback.record_feedback``; its errors (404 for
a request that is not the caller's, 400 for a bad score) leave in the OpenAI shape.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from modelmint.feedback.feedback import MAX_COMMENT_CHARS, FeedbackGiven, record_feedback
from modelmint.gateway.deps import CurrentKey
from modelmint.platform import PlatformDep

__all__ = ["FeedbackCreate", "FeedbackPublic", "router"]

router = APIRouter(prefix="/v1", tags=["feedback"])


class FeedbackCreate(BaseModel):
    """A rating: thumbs (true/false, "up"/"down"), stars (1-5), a named number, or a
    category, with an optional corrected output or label and an optional comment.
    ``request_id`` is the response's ``id`` or its X-Request-ID header."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64)
    score: bool | int | float | str
    kind: Literal["thumbs", "stars", "numeric", "categorical"] | None = None
    name: str = Field(default="score", min_length=1, max_length=60)
    corrected_output: str | None = Field(default=None, max_length=100_000)
    corrected_label: str | None = Field(default=None, min_length=1, max_length=200)
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS)


class FeedbackPublic(BaseModel):
    object: Literal["feedback"] = "feedback"
    request_id: str
    model: str
    name: str
    kind: str
    score: float | None
    label: str | None
    corrected_output: str | None
    corrected_label: str | None
    comment: str | None


@router.post("/feedback", response_model=FeedbackPublic)
async def create_feedback(
    body: FeedbackCreate, key: CurrentKey, platform: PlatformDep
) -> FeedbackPublic:
    """Rate one of your organisation's requests; rating it again replaces the rating."""
    given = FeedbackGiven(
        request_id=body.request_id,
        score=body.score,
        kind=body.kind,
        name=body.name,
        corrected_output=body.corrected_output,
        corrected_label=body.corrected_label,
        comment=body.comment,
    )

    def store(session: Session) -> FeedbackPublic:
        row = record_feedback(session, key.organization_id, key.id, given)
        return FeedbackPublic(
            request_id=row.request_id,
            model=row.model,
            name=row.score_name,
            kind=row.score_kind,
            score=row.score,
            label=row.label,
            corrected_output=row.corrected_output,
            corrected_label=row.corrected_label,
            comment=row.comment,
        )

    return await platform.in_session(store)
