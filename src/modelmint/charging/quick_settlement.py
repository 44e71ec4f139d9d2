"""Quick settlement: a paid batch whose charges are known before its insert.

Every charge of such a batch is independent of the period's running totals (flat
prices, no allowance: ``rating.LinearRates``), each request was admitted against a
wallet lease or needs no wallet, and nothing else is held (``Charger.quick`` picks
them). Nothing is read: the charges go in the usage rows' insert, and the totals
and lease statements add blindly, in the same round trip as an unbilled batch. The
bet (every event new, every lease open with room, no budgets to keep spend for) is
checked on the round trip's results on SQLite (``holds``), by the statement itself
on PostgreSQL (``QuickSql.joined``); when it is lost the writer rolls back and
settles the batch the general way (``settlement.BatchSettlement``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal

from modelmint.billing import Metric
from modelmint.billing.exact import EXACT, Quantity, plus
from modelmint.billing.periods import Period, utc
from modelmint.billing.rating import LinearRates
from modelmint.charging.quantities import measured
from modelmint.charging.quick_sql import AddedTotal, QuickSql
from modelmint.clock import utcnow
from modelmint.metering.events import UsageEvent
from modelmint.storage.batch import Rows, Statement

__all__ = ["Committed", "QuickSettlement"]

_ZERO = Decimal(0)

# Told, once a batch committed, its events, the ids the insert stored and each charge.
Committed = Callable[[Sequence[UsageEvent], set[str], dict[str, Decimal]], None]


class QuickSettlement:
    """A batch settled without reads: its charges are known before the insert."""

    def __init__(
        self,
        on_committed: Committed,
        sql: QuickSql,
        billed: list[UsageEvent],
        lines: list[LinearRates],
    ) -> None:
        """``lines``: each billed event's rates, in the same order."""
        self._on_committed = on_committed
        self._billed = billed
        self.charges: dict[str, Decimal] = {}
        charges = self.charges
        # What the batch adds to the usage totals, per organisation, month and rates.
        # Keyed by the rates' identity: the charger keeps one per plan version, model
        # and endpoint, and hashing them (or their plan) costs more. A slot's amounts are
        # worked out once, at the end: a linear price of the summed quantity is exactly
        # the sum of the requests' charges (exact arithmetic never rounds).
        slots: dict[tuple[str, int, int, int], _Slot] = {}
        pending: dict[str, Decimal] = {}
        for event, line in zip(billed, lines, strict=True):
            amount = _ZERO
            if event.status_code < 400:  # a failed request owes nothing
                moment = event.created_at
                if moment.tzinfo is not UTC:
                    moment = utc(moment)
                key = (event.organization_id, moment.year, moment.month, id(line))
                slot = slots.get(key)
                if slot is None:
                    slot = slots[key] = _Slot(line, event.organization_id, moment)
                amount = slot.add(event)
                lease = event.wallet_lease
                if lease is not None and amount:
                    before = pending.get(lease)
                    pending[lease] = amount if before is None else EXACT.add(before, amount)
            charges[event.id] = amount
        self._leases = set(pending)
        totals = [total for slot in slots.values() for total in slot.totals()]
        organizations = sorted({e.organization_id for e in billed})
        self._sql = sql
        self._parts = (totals, sorted(pending.items()), organizations, utcnow())
        self.statements = sql.statements(*self._parts) if sql.sqlite else []

    def joined(self, insert: Statement, events: int) -> Statement | None:
        """On PostgreSQL, the usage rows' ``insert`` (of ``events`` rows) and this batch's
        statements as one that checks the bet (``QuickSql.joined``); on SQLite None,
        ``statements`` go apart."""
        if self._sql.sqlite:
            return None
        return self._sql.joined(insert, events, *self._parts)

    def holds(self, results: Sequence[Rows]) -> bool:
        """On SQLite, whether the bet held (``results``: the rows of ``statements``): no
        budgets to keep spend for, and every lease open with room for what was added to
        it."""
        seen = {row[0] for rows in results for row in rows if row}
        return "#budget" not in seen and seen == self._leases

    def committed(self, fresh: set[str], results: Sequence[Rows]) -> None:
        self._on_committed(self._billed, fresh, self.charges)


class _Slot:
    """What a quick batch adds to the usage totals of one organisation, month and set
    of rates: the requests' measured quantities, summed."""

    __slots__ = ("count", "line", "organization_id", "quantities", "start")

    def __init__(self, line: LinearRates, organization_id: str, moment: datetime) -> None:
        self.line = line
        self.organization_id = organization_id
        self.start = _month_start(moment.year, moment.month)
        self.quantities: dict[Metric, Quantity] = dict.fromkeys(line.units, 0)
        self.count = 0

    def add(self, event: UsageEvent) -> Decimal:
        """Add the request's quantities; what it costs."""
        used = measured(event.endpoint, event.input_tokens, event.output_tokens, event.engine_ms)
        quantities = self.quantities
        for metric, quantity in quantities.items():
            quantities[metric] = plus(quantity, used[metric])
        self.count += 1
        return self.line.charge(used)

    def totals(self) -> list[AddedTotal]:
        line, count = self.line, self.count
        plan, included = line.plan, line.included
        org, start = self.organization_id, self.start
        return [
            (org, start, plan.code, plan.version, line.model, metric,
             quantity, quantity if metric in included else 0, line.amount(metric, quantity),
             count)
            for metric, quantity in self.quantities.items()
        ]  # fmt: skip


@functools.lru_cache(maxsize=4)
def _month_start(year: int, month: int) -> datetime:
    return Period.month(year, month).start
