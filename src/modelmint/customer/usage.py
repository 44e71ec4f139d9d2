"""An organisation's own usage and spend over a time range, grouped by day, model or key.

Read from the usage rows themselves, so every figure is the exact sum of what was
metered: requests (answered and refused), tokens, and the charges in each currency
(exact: ``analytics.money_sql.exact_sum``). A range is at most ``MAX_RANGE`` long, which
bounds the rows read for one answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import String

from modelmint.analytics.money_sql import exact_sum, prepare
from modelmint.errors import InvalidRequest
from modelmint.storage.tables import UsageRecord

__all__ = ["GROUPS", "MAX_RANGE", "UsageLine", "usage_report"]

MAX_RANGE = timedelta(days=366)
# What usage may be grouped by, and the column each is read from.
GROUPS = ("day", "model", "key")


class utc_day(FunctionElement[str]):
    """The UTC calendar day of a timestamp column, as ``YYYY-MM-DD`` text."""

    type = String()
    name = "utc_day"
    inherit_cache = True


@compiles(utc_day)
def _day_postgres(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@compiles(utc_day, "sqlite")
def _day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps UTC timestamps as naive ISO text: the day is its first ten characters.
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One group's sums; a grouping not asked for is None."""

    day: str | None
    model: str | None
    api_key_id: str | None
    currency: str | None  # None: requests on no plan (nothing charged)
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    spend: Decimal

    def to_dict(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "model": self.model,
            "api_key_id": self.api_key_id,
            "currency": self.currency,
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "spend": f"{self.spend:f}",
        }


def parse_groups(text: str | None) -> tuple[str, ...]:
    """``"day,model"`` -> ("day", "model"); refuses anything but ``GROUPS``."""
    if not text:
        return ()
    groups = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise InvalidRequest(
            f"cannot group usage by {', '.join(unknown)}: choose from {', '.join(GROUPS)}",
            param="group_by",
        )
    return groups


def usage_report(
    session: Session,
    organization_id: str,
    start: datetime,
    end: datetime,
    group_by: Sequence[str] = (),
) -> list[UsageLine]:
    """The organisation's usage in ``[start, end)``, one line per group and currency,
    ordered by the groups."""
    if end <= start:
        raise InvalidRequest("end must be after start", param="end")
    if end - start > MAX_RANGE:
        raise InvalidRequest(
            f"a usage range is at most {MAX_RANGE.days} days; ask for several", param="start"
        )
    columns: dict[str, Any] = {
        "day": utc_day(UsageRecord.created_at),
        "model": UsageRecord.model,
        "key": UsageRecord.api_key_id,
    }
    keys = [columns[group].label(group) for group in group_by]
    keys.append(UsageRecord.currency.label("currency"))
    failed = case((UsageRecord.status_code >= 400, 1), else_=0)
    query = (
        select(
            *keys,
            func.count().label("requests"),
            func.coalesce(func.sum(failed), 0).label("errors"),
            func.coalesce(func.sum(UsageRecord.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(UsageRecord.output_tokens), 0).label("output_tokens"),
            exact_sum(UsageRecord.charge).label("spend"),
        )
        .where(
            UsageRecord.organization_id == organization_id,
            UsageRecord.created_at >= start,
            UsageRecord.created_at < end,
        )
        .group_by(*keys)
        .order_by(*keys)
    )
    prepare(session)
    lines = []
    for row in session.execute(query).mappings():
        lines.append(
            UsageLine(
                day=row.get("day"),
                model=row.get("model"),
                api_key_id=row.get("key"),
                currency=row["currency"],
                requests=int(row["requests"]),
                errors=int(row["errors"]),
                input_tokens=int(row["input_tokens"]),
                output_tokens=int(row["output_tokens"]),
                spend=Decimal(row["spend"] or 0),
            )
        )
    return lines
