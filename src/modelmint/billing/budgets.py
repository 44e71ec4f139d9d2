"""Budgets and thresholds: monthly spend caps, and the alerts they and other limits raise.

A ``Budget`` caps what an organisation, or one of its API keys, may be charged per
calendar month. A *hard* budget refuses a request whose worst-case cost, added to
what the month has been charged and what requests in flight hold, would pass the
limit; a *soft* budget only alerts. Either raises an alert at each of its
``thresholds`` (percent of the limit), once per month.

``crossed`` is the one threshold rule, shared by budgets, prepaid credit (percent of
the credit granted that has been consumed) and included units (percent of an
allowance used): a threshold fires when usage moves from below it to at or above it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal

from modelmint.billing.errors import InvalidBudget
from modelmint.billing.exact import EXACT
from modelmint.billing.money import Money

__all__ = ["DEFAULT_THRESHOLDS", "MAX_THRESHOLD", "Budget", "alert_id", "crossed"]

DEFAULT_THRESHOLDS = (50, 80, 100)
# The highest threshold a budget may be set with: past 100 % a hard budget has refused
# already, and a soft one has raised its 100 % alert.
MAX_THRESHOLD = 100
# What a stored budget may hold: budgets set before MAX_THRESHOLD applied still load.
_MAX_PERCENT = 1000


def _thresholds(values: object) -> tuple[int, ...]:
    if not isinstance(values, tuple | list):
        raise InvalidBudget(f"thresholds must be a list of percentages, got {values!r}")
    result: list[int] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidBudget(f"a threshold is a whole percentage, got {value!r}")
        if not 1 <= value <= _MAX_PERCENT:
            raise InvalidBudget(f"a threshold must be within 1..{_MAX_PERCENT}%, got {value}")
        result.append(value)
    if len(set(result)) != len(result):
        raise InvalidBudget(f"thresholds repeat: {sorted(result)}")
    return tuple(sorted(result))


@dataclass(frozen=True, slots=True)
class Budget:
    """A monthly spend cap: ``limit`` per calendar month, hard (402) or soft (alert only)."""

    limit: Money
    hard: bool = True
    thresholds: tuple[int, ...] = field(default=DEFAULT_THRESHOLDS)

    def __post_init__(self) -> None:
        if not isinstance(self.limit, Money):
            raise TypeError(f"a budget limit is Money, got {type(self.limit).__name__}")
        if self.limit.amount <= 0:
            raise InvalidBudget(f"a budget must be positive, got {self.limit}")
        object.__setattr__(self, "thresholds", _thresholds(self.thresholds))

    def room(self, spent: Decimal, held: Decimal) -> Decimal:
        """What may still be committed this month (negative once past a soft limit)."""
        return EXACT.subtract(self.limit.amount, EXACT.add(spent, held))

    def admits(self, spent: Decimal, held: Decimal, worst: Decimal) -> bool:
        """Whether a request costing at most ``worst`` may start."""
        return not self.hard or worst <= self.room(spent, held)

    def crossed(self, before: Decimal, after: Decimal) -> list[int]:
        return crossed(self.thresholds, before, after, self.limit.amount)


def crossed(
    thresholds: tuple[int, ...], before: Decimal, after: Decimal, whole: Decimal
) -> list[int]:
    """The thresholds (percent of ``whole``) usage passed going from ``before`` to ``after``."""
    if whole <= 0 or after <= before:
        return []
    fired = []
    for percent in thresholds:
        line = EXACT.divide(EXACT.multiply(whole, percent), 100)
        if before < line <= after:
            fired.append(percent)
    return fired


def alert_id(
    organization_id: str, api_key_id: str, kind: str, subject: str, period: object, threshold: int
) -> str:
    """The id of the alert a threshold raises: derived from what it is about, so that it
    is raised once per (scope, kind, subject, period, threshold) however many writers
    cross it."""
    identity = f"{organization_id}|{api_key_id}|{kind}|{subject}|{period}|{threshold}"
    return "alr_" + hashlib.sha256(identity.encode()).hexdigest()[:40]
