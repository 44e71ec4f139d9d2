"""The feedback loop's rows, owned by ``modelmint.feedback``: customers' ratings of served
requests, the opt-in captured samples (redacted before they are written), and the
datasets built from both."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.tables.base import Base

__all__ = ["Feedback", "FeedbackDataset", "RequestSample", "SampleCapturePolicy"]


class Feedback(Base):
    """A customer's rating of one served request; repeated feedback updates the row."""

    __tablename__ = "feedback"

    # The request id (``usage_records.id``) the rating is about.
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200), index=True)
    model_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    # thumbs, stars (1-5), numeric or categorical; ``score`` is the number compared across
    # versions (thumbs: 1 up, 0 down), ``label`` the category of a categorical score.
    score_name: Mapped[str] = mapped_column(String(60), default="score")
    score_kind: Mapped[str] = mapped_column(String(20))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    corrected_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    corrected_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The rater's own words (bounded by ``feedback.MAX_COMMENT_CHARS``).
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SampleCapturePolicy(Base):
    """Who opted in to sample capture: an organisation or one of its keys."""

    __tablename__ = "sample_capture_policies"

    # "organization" or "key", and that subject's id.
    scope: Mapped[str] = mapped_column(String(20), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    retention_days: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RequestSample(Base):
    """The request and response text of one served request, PII already redacted."""

    __tablename__ = "request_samples"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200), index=True)
    model_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(40))
    request_text: Mapped[str] = mapped_column(Text)
    response_text: Mapped[str] = mapped_column(Text)
    # PII placeholders written, per kind, so reviewers know what was removed.
    redactions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the purge job deletes it (created_at + the policy's retention).
    expires_at: Mapped[datetime] = mapped_column(index=True)


class FeedbackDataset(Base):
    """One version of a dataset built from feedback, and the requests it came from."""

    __tablename__ = "feedback_datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source_model: Mapped[str] = mapped_column(String(200))
    # csv (tabular classifiers) or jsonl (chat and text).
    format: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    data_hash: Mapped[str] = mapped_column(String(80))
    rows: Mapped[int] = mapped_column(Integer)
    request_ids: Mapped[list[str]] = mapped_column(default=list)
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
