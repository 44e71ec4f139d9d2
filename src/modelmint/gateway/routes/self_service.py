"""`GET /v1/usage` and `GET /v1/balance`: a key holder's view of its own organisation.

The organisation is the key's, never a parameter, so no request can reach another
organisation's figures. Both answer even while the organisation is blocked for an
overdue payment (see ``deps.SELF_SERVICE_PATHS``): that is when a customer needs them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy.orm import Session

from modelmint.billing.periods import Period
from modelmint.clock import utcnow
from modelmint.customer.balance import balance
from modelmint.customer.usage import parse_groups, usage_report
from modelmint.errors import InvalidRequest, NotFound
from modelmint.gateway.deps import CurrentKey
from modelmint.platform import PlatformDep
from modelmint.storage.tables import Organization

router = APIRouter(prefix="/v1", tags=["self-service"])


class UsageLine(BaseModel):
    day: str | None = None
    model: str | None = None
    api_key_id: str | None = None
    currency: str | None = None
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    spend: str


class Usage(BaseModel):
    object: Literal["usage"] = "usage"
    organization_id: str
    start: datetime
    end: datetime
    group_by: list[str]
    data: list[UsageLine]


class Credit(BaseModel):
    currency: str
    balance: str
    reserved: str
    available: str


class BudgetLeft(BaseModel):
    scope: Literal["organization", "key"]
    api_key_id: str | None
    period: str
    currency: str
    limit: str
    spent: str
    remaining: str
    hard: bool


class Balance(BaseModel):
    object: Literal["balance"] = "balance"
    organization_id: str
    credit: list[Credit]
    budgets: list[BudgetLeft]
    limits: dict[str, dict[str, Any]]


def _instant(value: str | None, default: datetime, name: str) -> datetime:
    if value is None:
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time, not {value!r}", param=name
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/usage", response_model=Usage)
async def own_usage(
    key: CurrentKey,
    platform: PlatformDep,
    start: str | None = Query(default=None, description="default: start of this month (UTC)"),
    end: str | None = Query(default=None, description="default: now; exclusive"),
    group_by: str | None = Query(
        default=None, description="comma-separated: day, model, key (default: none)"
    ),
) -> Usage:
    """Requests, tokens and spend of the key's organisation in ``[start, end)``."""
    now = utcnow()
    since = _instant(start, Period.containing(now).start, "start")
    until = _instant(end, now, "end")
    groups = parse_groups(group_by)
    lines = await platform.in_session(
        lambda s: usage_report(s, key.organization_id, since, until, groups)
    )
    return Usage(
        organization_id=key.organization_id,
        start=since,
        end=until,
        group_by=list(groups),
        data=[UsageLine(**line.to_dict()) for line in lines],
    )


@router.get("/balance", response_model=Balance)
async def own_balance(key: CurrentKey, platform: PlatformDep) -> Balance:
    """Prepaid credit, this month's budgets with what is left, and the limits in force."""

    def work(session: Session) -> dict[str, Any]:
        organization = session.get(Organization, key.organization_id)
        if organization is None:
            raise NotFound("the key's organisation no longer exists")
        return balance(session, organization, key)

    return Balance.model_validate(await platform.in_session(work))
