"""Periods and proration: exact shares of real months, cumulative rounding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.billing import InvalidPeriod, Money, Period, prorate
from modelmint.billing.proration import accrued, elapsed_share

NOV = Period.month(2026, 11)


def at(day: int, hour: int = 0, month: int = 11, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def test_a_month_is_a_half_open_utc_span() -> None:
    assert (NOV.start, NOV.end) == (at(1), at(1, month=12))
    assert Period.month(2026, 12).end == at(1, month=1, year=2027)
    assert NOV.duration == timedelta(days=30)
    assert Period.month(2028, 2).duration == timedelta(days=29)
    assert NOV.contains(at(30, 23)) and not NOV.contains(at(1, month=12))
    assert Period.containing(at(15)) == NOV
    assert NOV.next() == Period.month(2026, 12)
    assert NOV.shifted(-11) == Period.month(2025, 12)


def test_other_time_zones_are_normalised_and_naive_times_refused() -> None:
    tokyo = timezone(timedelta(hours=9))
    # 09:00 on 1 November in Tokyo is midnight UTC: the first instant of November.
    assert Period.containing(datetime(2026, 11, 1, 9, tzinfo=tokyo)) == NOV
    assert Period.containing(datetime(2026, 11, 1, 8, tzinfo=tokyo)) == Period.month(2026, 10)
    with pytest.raises(InvalidPeriod, match="no timezone"):
        Period.containing(datetime(2026, 11, 1))
    with pytest.raises(InvalidPeriod, match="not after start"):
        Period(at(2), at(1))
    with pytest.raises(InvalidPeriod, match=r"1\.\.12"):
        Period.month(2026, 13)


def test_the_share_is_exact_time_of_this_month() -> None:
    assert elapsed_share(NOV, at(16)) == Fraction(1, 2)
    assert elapsed_share(NOV, at(1, 12)) == Fraction(1, 60)
    assert elapsed_share(NOV, at(1, month=10)) == 0
    assert elapsed_share(NOV, at(5, month=12)) == 1


def test_prorate_examples() -> None:
    fee = Money.parse("30.00", "USD")
    assert prorate(fee, NOV, at(11), NOV.end) == Money.parse("20.00", "USD")
    assert prorate(fee, NOV, NOV.start, NOV.end) == fee
    # 10.00 over 30 days: 1/3 of a month is 3.333..., rounded once.
    assert prorate(Money.parse("10", "USD"), NOV, at(21), NOV.end) == Money.parse("3.33", "USD")
    with pytest.raises(InvalidPeriod, match="before it starts"):
        prorate(fee, NOV, at(20), at(10))


def test_cumulative_rounding_keeps_the_cent_that_two_ties_would_lose() -> None:
    fee = Money.parse("0.01", "USD")
    first = prorate(fee, NOV, NOV.start, at(16))  # exactly 0.005
    second = prorate(fee, NOV, at(16), NOV.end)  # exactly 0.005
    assert (first, second) == (Money.parse("0.00", "USD"), Money.parse("0.01", "USD"))
    # Rounding each half on its own (half-even) would give 0.00 + 0.00.
    assert Money.rounded(Fraction(1, 200), "USD").is_zero


fees = st.decimals(min_value=0, max_value=Decimal("100000"), places=2).map(
    lambda amount: Money(amount, "USD")
)
months = st.builds(Period.month, st.integers(2000, 2100), st.integers(1, 12))
instants = st.integers(min_value=0)  # microseconds into the period, reduced below


def instant_in(period: Period, offset: int) -> datetime:
    span = period.duration // timedelta(microseconds=1)
    return period.start + timedelta(microseconds=offset % (span + 1))


@settings(max_examples=200, deadline=None)
@given(fees, months)
def test_the_full_period_costs_exactly_the_fee(fee: Money, period: Period) -> None:
    assert prorate(fee, period, period.start, period.end) == fee


@settings(max_examples=300, deadline=None)
@given(fees, months, instants)
def test_a_split_at_any_instant_sums_to_the_fee(fee: Money, period: Period, offset: int) -> None:
    split = instant_in(period, offset)
    used = prorate(fee, period, period.start, split)
    unused = prorate(fee, period, split, period.end)
    assert used + unused == fee
    # The credit a plan change gives back: the fee, minus the credit, is the used part.
    assert fee - unused == used


@settings(max_examples=200, deadline=None)
@given(fees, months, st.lists(instants, max_size=8))
def test_any_partition_sums_to_the_fee_and_each_piece_is_within_a_cent(
    fee: Money, period: Period, offsets: list[int]
) -> None:
    cuts = sorted(instant_in(period, o) for o in offsets)
    bounds = [period.start, *cuts, period.end]
    pieces = [prorate(fee, period, a, b) for a, b in pairwise(bounds)]
    assert Money.total(pieces, "USD") == fee
    for (a, b), piece in zip(pairwise(bounds), pieces, strict=True):
        exact = Fraction(fee.amount) * (elapsed_share(period, b) - elapsed_share(period, a))
        assert abs(Fraction(piece.amount) - exact) < Fraction(1, 100)
        assert piece.is_quantized


def test_accrued_is_rounded_half_even() -> None:
    # 0.05 over 30 days at day 16: 0.025 exactly, which ties to 0.02.
    assert accrued(Money.parse("0.05", "USD"), NOV, at(16)) == Money.parse("0.02", "USD")
