"""An in-memory ``LeaseStore`` for unit tests of the lease book: pools of credit, leases,
the same fair-share rule as the database store, and a count of every call."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from modelmint.charging.leases import Granted, LeaseLost, Pool, fair_share

ZERO = Decimal(0)


@dataclass
class MemoryLeaseStore:
    """``free`` is each pool's credit not leased (nor held); ``leases`` each open lease's
    pool and amount. ``gate``, when set, holds every call until it is set again."""

    free: dict[Pool, Decimal] = field(default_factory=dict)
    leases: dict[str, tuple[Pool, Decimal]] = field(default_factory=dict)
    ttl: timedelta = timedelta(seconds=30)
    calls: list[str] = field(default_factory=list)
    fail: bool = False
    gate: threading.Event | None = None
    _count: int = 0

    def _enter(self, name: str) -> datetime:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.calls.append(name)
        if self.fail:
            raise ConnectionError("database unavailable")
        return datetime.now(UTC)

    def _others(self, pool: Pool, mine: str | None) -> int:
        return sum(1 for i, (p, _) in self.leases.items() if p == pool and i != mine)

    def open(self, pool: Pool, want: Decimal, minimum: Decimal) -> Granted | None:
        now = self._enter("open")
        grant = min(want, fair_share(self.free.get(pool, ZERO), self._others(pool, None)))
        if grant < minimum or grant <= 0:
            return None
        self._count += 1
        lease_id = f"lse_{self._count}"
        self.leases[lease_id] = (pool, grant)
        self.free[pool] -= grant
        return Granted(lease_id, grant, now + self.ttl, now, low=False)

    def renew(self, lease_id: str, pool: Pool, change: Decimal, minimum: Decimal) -> Granted:
        now = self._enter("renew")
        if lease_id not in self.leases:
            raise LeaseLost(lease_id)
        _, amount = self.leases[lease_id]
        share = fair_share(self.free[pool], self._others(pool, lease_id))
        low = share < minimum
        # More within the fair share (nothing when low), or that much handed back.
        moved = (ZERO if low else min(change, share)) if change > 0 else -min(-change, amount)
        self.leases[lease_id] = (pool, amount + moved)
        self.free[pool] -= moved
        return Granted(lease_id, moved, now + self.ttl, now, low=low)

    def close(self, lease_id: str, pool: Pool) -> None:
        self._enter("close")
        found = self.leases.pop(lease_id, None)
        if found is not None:
            self.free[pool] += found[1]

    def consume(self, lease_id: str, charge: Decimal) -> None:
        """What the metering writer does when it charges a request through a lease."""
        pool, amount = self.leases[lease_id]
        self.leases[lease_id] = (pool, amount - min(charge, amount))

    def leased(self, pool: Pool) -> Decimal:
        return sum((a for p, a in self.leases.values() if p == pool), ZERO)
