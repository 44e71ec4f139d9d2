"""Quick settlement: a paid batch whose charges are known before its insert.

Every charge of such a batch is independent of the period's running totals (flat
prices, no allowance: ``rating.LinearRates``), each request was admitted against a
wallet lease or needs no wallet, and nothing else is held (``Charger.quick`` picks
them). Nothing is read: the charges go in the usage rows' insert, and the totals
and lease statements add blindly, in the same round trip as an unbilled batch. The
bet (every event new, every lease open with room, no budgets to keep spend for) is
checked on the round trip's results (``holds``); when it is lost the writer rolls
back and settles the batch the general way (``settlement.BatchSettlement``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from modelmint.billing import Metric
from modelmint.billing.exact import EXACT, plus
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
        rates: dict[str, LinearRates],
    ) -> None:
        self._on_committed = on_committed
        self._billed = billed
        self.charges: dict[str, Decimal] = {}
        # What the batch adds to the usage totals, per (organisation, period start,
        # rates): the rates, then per billed metric [quantity, included, amount,
        # charges]. Keyed by the rates' identity: the charger keeps one per plan
        # version, model and endpoint, and hashing them (or their plan) costs more.
        added: dict[tuple[str, datetime, int], tuple[LinearRates, dict[Metric, list[Any]]]] = {}
        pending: dict[str, Decimal] = {}
        for event in billed:
            amount = _ZERO
            if event.status_code < 400:  # a failed request owes nothing
                moment = event.created_at
                if moment.tzinfo is not UTC:
                    moment = utc(moment)
                line = rates[event.id]
                slot = (event.organization_id, _month_start(moment.year, moment.month), id(line))
                found = added.get(slot)
                if found is None:
                    found = added[slot] = (
                        line,
                        {metric: [0, 0, _ZERO, 0] for metric in line.units},
                    )
                sums = found[1]
                used = measured(
                    event.endpoint, event.input_tokens, event.output_tokens, event.engine_ms
                )
                included = line.included
                for metric, unit in line.units.items():
                    quantity = used[metric]
                    total = sums[metric]
                    total[0] = plus(total[0], quantity)
                    total[3] += 1
                    if metric in included:
                        total[1] = plus(total[1], quantity)
                    elif unit:
                        part = EXACT.multiply(unit, quantity)
                        total[2] = EXACT.add(total[2], part)
                        amount = EXACT.add(amount, part)
            self.charges[event.id] = amount
            if event.wallet_lease is not None and amount > 0:
                lease = event.wallet_lease
                pending[lease] = EXACT.add(pending.get(lease, _ZERO), amount)
        self._leases = set(pending)
        totals: list[AddedTotal] = []
        for (org, start, _), (line, sums) in added.items():
            plan = line.plan
            for metric, (quantity, inside, total, count) in sums.items():
                totals.append(
                    (org, start, plan.code, plan.version, line.model, metric,
                     quantity, inside, total, count)
                )  # fmt: skip
        organizations = sorted({e.organization_id for e in billed})
        self._sql = sql
        self._parts = (totals, sorted(pending.items()), organizations, utcnow())
        self.statements = sql.statements(*self._parts) if sql.sqlite else []

    def joined(self, insert: Statement) -> Statement | None:
        """On PostgreSQL, the usage rows' ``insert`` and this batch's statements as one
        (``QuickSql.joined``); on SQLite None, ``statements`` go apart."""
        return None if self._sql.sqlite else self._sql.joined(insert, *self._parts)

    def holds(self, results: Sequence[Rows]) -> bool:
        """Whether the bet held (``results``: the rows of ``statements``): no budgets to
        keep spend for, and every lease open with room for what was added to it."""
        seen = {row[0] for rows in results for row in rows if row}
        return "#budget" not in seen and seen == self._leases

    def committed(self, fresh: set[str], results: Sequence[Rows]) -> None:
        self._on_committed(self._billed, fresh, self.charges)


@functools.lru_cache(maxsize=4)
def _month_start(year: int, month: int) -> datetime:
    return Period.month(year, month).start
