"""The reading of the date and time options the commands share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from modelmint.cli.values import instant
from modelmint.errors import InvalidRequest


def test_a_date_is_its_midnight_in_utc() -> None:
    assert instant("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)


def test_a_time_without_a_zone_is_taken_as_utc_and_a_zoned_one_is_kept() -> None:
    assert instant("2026-11-01T08:30:00") == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)
    zoned = instant("2026-11-01T08:30:00+02:00")
    assert zoned == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    assert zoned is not None and zoned.utcoffset() == timedelta(hours=2)
    assert zoned.tzinfo == timezone(timedelta(hours=2))


def test_no_value_is_none() -> None:
    assert instant(None) is None


def test_a_value_that_is_no_time_is_refused_naming_its_option() -> None:
    with pytest.raises(InvalidRequest, match=r"--at 'tomorrow' is not a date \(YYYY-MM-DD\)"):
        instant("tomorrow", option="--at")
    with pytest.raises(InvalidRequest, match=r"^'2026-13-01' is not a date"):
        instant("2026-13-01")
