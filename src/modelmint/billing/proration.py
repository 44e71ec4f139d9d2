"""Proration: the share of a period's fixed fee that falls in part of the period.

The share is the exact fraction of *time*, to the microsecond (datetime's
resolution), of this particular month: a plan changed on 10 November at 14:00 pays
the old fee up to 14:00 and the new one after, and no day is paid twice or never.
Days would be simpler to read but would bill the day of a change twice (or not
at all); seconds of a 30-day month (2,592,000) do not divide a fee into a finite
decimal, so the fraction is computed as a ``Fraction`` and rounded once.

Cumulative rounding. The fee *accrued* by an instant t is ``round(fee * share(t))``
(half-even, to minor units). The amount for a span ``[a, b)`` is
``accrued(b) - accrued(a)``. Rounding the boundaries rather than the pieces makes
every partition of a period telescope: for any instants, the pieces sum to
``accrued(end) - accrued(start)`` = the full fee exactly, to the last minor unit,
and each piece is still within one minor unit of its exact share. Rounding each
piece on its own would lose or invent a cent whenever two halves both tie.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from fractions import Fraction

from modelmint.billing.errors import InvalidPeriod
from modelmint.billing.money import Money
from modelmint.billing.periods import Period, utc

__all__ = ["accrued", "elapsed_share", "prorate"]

_MICROSECOND = timedelta(microseconds=1)


def elapsed_share(period: Period, instant: datetime) -> Fraction:
    """Exact share of ``period`` elapsed at ``instant``: 0 at its start, 1 at its end."""
    moment = utc(instant)
    if moment <= period.start:
        return Fraction(0)
    if moment >= period.end:
        return Fraction(1)
    return Fraction((moment - period.start) // _MICROSECOND, period.duration // _MICROSECOND)


def accrued(fee: Money, period: Period, instant: datetime) -> Money:
    """The part of ``fee`` earned from the period's start up to ``instant``, rounded."""
    return Money.rounded(Fraction(fee.amount) * elapsed_share(period, instant), fee.currency)


def prorate(fee: Money, period: Period, start: datetime, end: datetime) -> Money:
    """The share of ``fee`` for ``[start, end)`` inside ``period``, in minor units.

    ``prorate(fee, p, p.start, p.end) == fee.quantize()``, and for any instants
    ``t0 <= t1 <= ... <= tn`` from start to end the pieces sum to that same amount.
    """
    if utc(end, "end") < utc(start, "start"):
        raise InvalidPeriod(f"proration span ends ({end.isoformat()}) before it starts")
    return accrued(fee, period, end) - accrued(fee, period, start)
