"""The usage explorer: raw usage rows, filtered and paged, newest first.

The one analytics query that reads ``usage_records`` itself, because it shows single
requests. Filters use the table's indexes (organisation + time, time); pages are
``page_size`` rows at ``(page - 1) * page_size``, and ``has_more`` says whether a
next page exists (no total count: counting millions of rows is what rollups avoid).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.errors import InvalidRequest
from modelmint.storage.tables import Organization, UsageRecord

__all__ = [
    "MAX_PAGE_SIZE",
    "STATUS_CLASSES",
    "UsageFilter",
    "UsagePage",
    "UsageRow",
    "explore_usage",
]

MAX_PAGE_SIZE = 500
# Status filters besides an exact code: "ok" (2xx), "error" (anything else), "4xx", "5xx".
STATUS_CLASSES = ("ok", "error", "4xx", "5xx")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which rows to show; None means no filter. ``organization`` is a name or an id;
    ``status`` an HTTP code (``"429"``) or one of ``STATUS_CLASSES``; the time range is
    ``[since, until)``."""

    organization: str | None = None
    model: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One request as metered (money exact; None where nothing was billed or costed)."""

    id: str
    created_at: datetime
    organization_id: str
    organization_name: str
    api_key_id: str
    model: str
    model_version_id: str | None
    deployment_id: str | None
    endpoint: str
    status_code: int
    input_tokens: int
    output_tokens: int
    latency_ms: int
    engine_ms: float
    streamed: bool
    finish_reason: str | None
    plan_code: str | None
    charge: Decimal | None
    currency: str | None
    cost: Decimal | None


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One page of rows, newest first."""

    rows: tuple[UsageRow, ...]
    page: int
    page_size: int
    has_more: bool


def _status(query: Select[UsageRecord, str], status: str) -> Select[UsageRecord, str]:
    code = UsageRecord.status_code
    if status == "ok":
        return query.where(code.between(200, 299))
    if status == "error":
        return query.where((code < 200) | (code > 299))
    if status in ("4xx", "5xx"):
        low = int(status[0]) * 100
        return query.where(code.between(low, low + 99))
    if status.isdigit() and len(status) == 3:
        return query.where(code == int(status))
    raise InvalidRequest(
        f"status {status!r} is neither an HTTP code nor one of {', '.join(STATUS_CLASSES)}",
        param="status",
    )


def explore_usage(
    session: Session, filters: UsageFilter | None = None, *, page: int = 1, page_size: int = 50
) -> UsagePage:
    """Returns a ``UsagePage``: the ``page``-th ``page_size`` usage rows matching ``filters``,
    newest first. An unknown organisation is ``NotFound``; a bad page or status is
    ``InvalidRequest``."""
    if page < 1:
        raise InvalidRequest("page starts at 1", param="page")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page_size must be within 1..{MAX_PAGE_SIZE}", param="page_size")
    wanted = filters or UsageFilter()
    query = select(UsageRecord, Organization.name).join(
        Organization, Organization.id == UsageRecord.organization_id
    )
    if wanted.organization is not None:
        org = accounts.get_org(session, wanted.organization)
        query = query.where(UsageRecord.organization_id == org.id)
    if wanted.model is not None:
        query = query.where(UsageRecord.model == wanted.model)
    if wanted.status is not None:
        query = _status(query, wanted.status.strip().lower())
    if wanted.since is not None:
        query = query.where(UsageRecord.created_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(UsageRecord.created_at < wanted.until)
    query = (
        query.order_by(UsageRecord.created_at.desc(), UsageRecord.id.desc())
        .offset((page - 1) * page_size)
        .limit(page_size + 1)
    )
    found = session.execute(query).all()
    rows = tuple(_row(record, name) for record, name in found[:page_size])
    return UsagePage(rows, page, page_size, has_more=len(found) > page_size)


def _row(record: UsageRecord, organization_name: str) -> UsageRow:
    return UsageRow(
        id=record.id,
        created_at=record.created_at,
        organization_id=record.organization_id,
        organization_name=organization_name,
        api_key_id=record.api_key_id,
        model=record.model,
        model_version_id=record.model_version_id,
        deployment_id=record.deployment_id,
        endpoint=record.endpoint,
        status_code=record.status_code,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        latency_ms=record.latency_ms,
        engine_ms=record.engine_ms,
        streamed=record.streamed,
        finish_reason=record.finish_reason,
        plan_code=record.plan_code,
        charge=record.charge,
        currency=record.currency,
        cost=record.cost,
    )
