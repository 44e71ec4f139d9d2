"""Fixed fees accrued over a window: subscription and licence fees spread pro rata.

A plan's fee is billed per calendar month. Analytics accrues it over time: the part
of a month's fee earned by an instant t is billing's own ``proration.accrued`` (the
fee times the share of the month elapsed, rounded once to minor units), so the
pieces of any split of a month (days, a report window, a plan change) add up to
exactly what the invoice charges for that month, to the last cent.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint.analytics.windows import DAY, to_day
from modelmint.billing.exact import EXACT
from modelmint.billing.money import Money
from modelmint.billing.periods import Period
from modelmint.billing.proration import accrued
from modelmint.billing.serialization import money_from_dict
from modelmint.billing.store.reporting import subscription_terms

__all__ = ["FeeSpan", "accrue", "fee_spans"]

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class FeeSpan:
    """An organisation paying ``fee`` per month on one plan during ``[start, end)``."""

    organization_id: str
    plan_code: str
    plan_kind: str
    fee: Money
    start: datetime
    end: datetime | None


def fee_spans(session: Session, window: Period, currency: str) -> list[FeeSpan]:
    """Subscriptions with a fee in ``currency`` that run for some of ``window``."""
    spans = []
    for org, starts, ends, code, kind, terms in subscription_terms(session, window, currency):
        if "fee" not in terms:
            continue  # free and prepaid plans have none
        fee = money_from_dict(terms["fee"], "plan fee")
        if not fee.is_zero:
            spans.append(FeeSpan(org, code, kind, fee, starts, ends))
    return spans


@functools.lru_cache(maxsize=4096)
def _pieces(fee: Money, start: datetime, end: datetime) -> tuple[tuple[datetime, Decimal], ...]:
    """The fee accrued in ``[start, end)`` per UTC day. Cached: subscriptions on one plan
    mostly share their boundaries (a whole month, midnight to midnight)."""
    pieces: list[tuple[datetime, Decimal]] = []
    last: tuple[Period, datetime, Money] | None = None
    moment = start
    while moment < end:
        month = Period.containing(moment)
        following = min(end, month.end, to_day(moment) + DAY)
        # Consecutive pieces share a boundary: accrue each instant once.
        if last is not None and last[0] == month and last[1] == moment:
            before = last[2]
        else:
            before = accrued(fee, month, moment)
        after = accrued(fee, month, following)
        last = (month, following, after)
        pieces.append((to_day(moment), (after - before).amount))
        moment = following
    return tuple(pieces)


def accrue(spans: list[FeeSpan], window: Period) -> dict[tuple[str, str, datetime], Decimal]:
    """Fee accrued in ``window`` per (organisation, plan code, UTC day), exact."""
    earned: dict[tuple[str, str, datetime], Decimal] = defaultdict(lambda: _ZERO)
    for span in spans:
        start = max(span.start, window.start)
        end = window.end if span.end is None else min(span.end, window.end)
        for day, amount in _pieces(span.fee, start, end):
            key = (span.organization_id, span.plan_code, day)
            earned[key] = EXACT.add(earned[key], amount)
    return dict(earned)
