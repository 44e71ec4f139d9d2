"""Option values the commands share the reading of."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

from modelmint.errors import InvalidRequest

__all__ = ["instant"]


def instant(value: str | None, *, option: str = "") -> datetime | None:
    """A date (``YYYY-MM-DD``: its midnight) or an ISO 8601 time, in UTC when it names no
    zone; None for None. ``option`` names the flag in the error (400, exit code 2)."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        flag = f"{option} " if option else ""
        raise InvalidRequest(
            f"{flag}{value!r} is not a date (YYYY-MM-DD) or ISO 8601 time"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
