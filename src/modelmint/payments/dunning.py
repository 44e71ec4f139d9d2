"""When a failed invoice payment is tried again, and when its organisation is cut off.

A schedule of retries counted from the first failure (``1,3,7`` days: a retry one,
three and seven days after it), and a grace period, also counted from the first
failure, after which the organisation's keys answer 402 ``payment_required`` until
a payment succeeds or the operator lifts the block.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from modelmint.errors import InvalidRequest

__all__ = ["DunningSchedule"]


@dataclass(frozen=True, slots=True)
class DunningSchedule:
    retries: tuple[timedelta, ...] = (timedelta(days=1), timedelta(days=3), timedelta(days=7))
    grace: timedelta = timedelta(days=10)

    @classmethod
    def parse(cls, retry_days: str, grace_days: float) -> DunningSchedule:
        """From settings: ``"1,3,7"`` and ``10`` (days; fractions allowed, for tests)."""
        try:
            days = [float(part) for part in retry_days.split(",") if part.strip()]
        except ValueError:
            raise InvalidRequest(
                f"payment retry days {retry_days!r} must be numbers separated by commas"
            ) from None
        if any(day <= 0 for day in days) or days != sorted(days):
            raise InvalidRequest(
                f"payment retry days {retry_days!r} must be positive and increasing"
            )
        if grace_days < 0:
            raise InvalidRequest(f"payment grace days must be zero or more, not {grace_days}")
        return cls(tuple(timedelta(days=day) for day in days), timedelta(days=grace_days))

    def next_attempt(self, first_failed_at: datetime, failed_attempts: int) -> datetime | None:
        """When to try again after ``failed_attempts`` failures; None when retries are spent."""
        if failed_attempts < 1 or failed_attempts > len(self.retries):
            return None
        return first_failed_at + self.retries[failed_attempts - 1]

    def blocks_at(self, first_failed_at: datetime) -> datetime:
        return first_failed_at + self.grace
