"""Credit leases in the database: ``billing_credit_leases`` and the pools' ``leased`` sums.

Every operation runs in its own short transaction that first locks the pool's row
(``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock on SQLite): the wallet row
for a wallet lease, the month's spend row for a budget lease. Everything else that
moves a pool's credit takes the same row first (admission's per-request holds, the
metering writer's settlement, top-ups), so a lease is granted only out of what is
really free, and ``leased`` is always the sum of the open leases' amounts.

This runs off the request path: when a lease is opened, refilled, renewed at a
check-in, handed back, or swept after its holder died.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint.billing import Money
from modelmint.billing.budgets import DEFAULT_THRESHOLDS, crossed
from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.billing.store.leases import StoredLease
from modelmint.charging.alerts import announce, threshold_alert
from modelmint.charging.leases import Granted, LeaseLost, Pool, fair_share
from modelmint.clock import utcnow
from modelmint.ids import new_id
from modelmint.observability.metrics import BILLING_SHORTFALLS
from modelmint.storage.db import Database

__all__ = ["DatabaseLeaseStore", "holder_name"]

log = logging.getLogger(__name__)
_ZERO = Decimal(0)


def holder_name() -> str:
    """Who holds a lease: this host and process (and a nonce, as pids are reused)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(slots=True)
class _PoolRow:
    """A locked pool: what is free in it, and how to write its ``leased`` sum."""

    key: str  # the wallet id, or the spend row's scope
    free: Decimal
    leased: Decimal
    ends: datetime | None  # a lease may not outlive this (the month's end)
    low: bool = False  # nothing may be leased now, whatever is free


class DatabaseLeaseStore:
    """``capture_every_s``: a renewal posts a lease's pending consumption to the ledger
    at most this often (closing and sweeping always do). Posting goes through the
    wallet's grants and alerts, about ten statements; renewals come every second."""

    def __init__(
        self, database: Database, *, holder: str, ttl_s: float, capture_every_s: float = 5.0
    ) -> None:
        self._database = database
        self.holder = holder[:120]
        self._ttl = timedelta(seconds=ttl_s)
        self._capture_every_s = capture_every_s
        self._captured: dict[str, float] = {}  # lease id -> when this process last posted it

    # -- the LeaseStore protocol ------------------------------------------------------------

    def open(self, pool: Pool, want: Decimal, minimum: Decimal) -> Granted | None:
        with self._database.session() as session:
            now = utcnow()
            row = self._lock(session, pool, now)
            if row is None or row.low:
                return None
            grant = min(want, self._share(session, pool, row, None))
            if grant < minimum or grant <= 0:
                return None
            expires = self._expiry(now, row)
            lease_id = new_id("lse")
            BillingStore(session).leases.add(
                lease_id,
                kind=pool.kind,
                organization_id=pool.organization_id,
                currency=pool.currency,
                wallet_id=row.key if pool.kind == "wallet" else None,
                api_key_id=pool.scope,
                period_start=pool.period_start,
                holder=self.holder,
                amount=grant,
                now=now,
                expires_at=expires,
            )
            self._set_leased(session, pool, row, EXACT.add(row.leased, grant))
            return Granted(lease_id, grant, expires, now, low=False)

    def renew(self, lease_id: str, pool: Pool, change: Decimal, minimum: Decimal) -> Granted:
        with self._database.session() as session:
            now = utcnow()
            row = self._lock(session, pool, now)
            lease = BillingStore(session).leases.lock_open(lease_id)
            if lease is None:
                self._captured.pop(lease_id, None)
                raise LeaseLost(lease_id)
            if row is None:  # wallets are never deleted: only a broken row gets here
                raise LeaseLost(lease_id)
            if self._capture_due(lease_id):
                self._capture(session, pool, row, lease, now)
            share = self._share(session, pool, row, lease_id)
            low = row.low or share < minimum
            if change > 0:
                moved = _ZERO if low else min(change, share)
            else:
                moved = EXACT.minus(min(EXACT.minus(change), lease.amount))
            if moved:
                lease.amount = EXACT.add(lease.amount, moved)
                if moved > 0:
                    lease.granted = EXACT.add(lease.granted, moved)
                self._set_leased(session, pool, row, EXACT.add(row.leased, moved))
            lease.expires_at = self._expiry(now, row)
            return Granted(lease_id, moved, lease.expires_at, now, low=low)

    def close(self, lease_id: str, pool: Pool) -> None:
        with self._database.session() as session:
            now = utcnow()
            row = self._lock(session, pool, now)
            lease = BillingStore(session).leases.lock_open(lease_id)
            if lease is not None and row is not None:
                self._finish(session, pool, row, lease, now)

    # -- sweeping ---------------------------------------------------------------------------

    def reclaim_expired(self) -> int:
        """Close the leases whose holders stopped renewing them; returns how many."""
        now = utcnow()
        with self._database.session() as session:
            due = BillingStore(session).leases.expired(now)
        closed = 0
        for lease_id, kind, organization_id, currency, scope, period_start in due:
            pool = _pool(kind, organization_id, currency, scope, period_start)
            with self._database.session() as session:
                row = self._lock(session, pool, now)
                lease = BillingStore(session).leases.lock_expired(lease_id, now)
                if lease is None or row is None:
                    continue  # renewed or closed meanwhile
                log.warning(
                    "credit lease %s of %s expired unrenewed: %s %s handed back to its pool",
                    lease.id,
                    lease.holder,
                    f"{lease.amount:f}",
                    lease.currency,
                )
                self._finish(session, pool, row, lease, now)
                closed += 1
        return closed

    # -- pools ------------------------------------------------------------------------------

    def _lock(self, session: Session, pool: Pool, now: datetime) -> _PoolRow | None:
        if pool.kind == "wallet":
            return self._lock_wallet(session, pool, now)
        return self._lock_budget(session, pool)

    def _lock_wallet(self, session: Session, pool: Pool, now: datetime) -> _PoolRow | None:
        wallet = BillingStore(session).leases.lock_wallet_pool(pool.organization_id, pool.currency)
        if wallet is None:
            return None
        wallet_id, balance, held, leased, expires_next = wallet
        free = EXACT.subtract(EXACT.subtract(balance, held), leased)
        # Credit that expires within two lease lifetimes is not leased: a lease and what
        # is pending on it are then always settled before any of its credit can expire
        # and be written off. Such a wallet is admitted against per request.
        soon = expires_next is not None and expires_next <= now + 2 * self._ttl
        return _PoolRow(wallet_id, free, leased, None, low=soon)

    def _lock_budget(self, session: Session, pool: Pool) -> _PoolRow:
        assert pool.period_start is not None
        budgets = BillingStore(session).budgets
        budget = budgets.budget(pool.organization_id, pool.scope)
        spend = budgets.lock_spend(
            pool.organization_id, [pool.scope], pool.period_start, pool.currency
        )
        amount, held = spend[pool.scope]
        leased = budgets.leased(pool.organization_id, pool.scope, pool.period_start)
        ends = Period.containing(pool.period_start).end
        if budget is None or not budget.hard or budget.limit.currency != pool.currency:
            # Removed, made soft or re-denominated since the lease was opened: nothing to lease.
            return _PoolRow(pool.scope, _ZERO, leased, ends, low=True)
        limit = budget.limit.amount
        free = EXACT.subtract(limit, EXACT.add(EXACT.add(amount, held), leased))
        return _PoolRow(pool.scope, free, leased, ends)

    def _set_leased(self, session: Session, pool: Pool, row: _PoolRow, leased: Decimal) -> None:
        store = BillingStore(session)
        if pool.kind == "wallet":
            store.leases.set_wallet_leased(row.key, leased)
        else:
            assert pool.period_start is not None
            store.budgets.set_leased(pool.organization_id, pool.scope, pool.period_start, leased)
        row.leased = leased

    def _share(self, session: Session, pool: Pool, row: _PoolRow, mine: str | None) -> Decimal:
        """The most one lease may take now (``fair_share``)."""
        leases = BillingStore(session).leases
        if pool.kind == "wallet":
            others = leases.open_count(wallet_id=row.key, other_than=mine)
        else:
            budget = (pool.organization_id, pool.scope, pool.period_start)
            others = leases.open_count(budget=budget, other_than=mine)
        return fair_share(row.free, others)

    def _expiry(self, now: datetime, row: _PoolRow) -> datetime:
        expires = now + self._ttl
        return expires if row.ends is None else min(expires, row.ends)

    def _capture_due(self, lease_id: str) -> bool:
        now = time.monotonic()
        last = self._captured.setdefault(lease_id, now)  # opened or first seen: not yet
        if now - last < self._capture_every_s:
            return False
        self._captured[lease_id] = now
        return True

    def _finish(
        self, session: Session, pool: Pool, row: _PoolRow, lease: StoredLease, now: datetime
    ) -> None:
        """Post what ``lease`` consumed, hand back the rest (its pool ``row`` is locked)
        and close it."""
        self._captured.pop(lease.id, None)
        self._capture(session, pool, row, lease, now)
        self._set_leased(session, pool, row, max(EXACT.subtract(row.leased, lease.amount), _ZERO))
        lease.amount = _ZERO
        lease.closed_at = now

    def _capture(
        self, session: Session, pool: Pool, row: _PoolRow, lease: StoredLease, now: datetime
    ) -> None:
        """Post to the wallet's ledger what requests admitted against ``lease`` consumed
        since the last capture (``pending``): one consumption, from the grants in spend
        order, dated when the last of them was charged."""
        pending = lease.pending
        if pool.kind != "wallet" or pending <= 0:
            return
        store = BillingStore(session)
        wallet = store.wallets.load_wallet(pool.organization_id, pool.currency, reservations=())
        granted, before = store.wallets.wallet_usage(wallet.id)
        moments = [t for t in (wallet.last_at, lease.last_consumed_at) if t is not None]
        at = max(moments, default=now)
        covered = min(pending, wallet.available(at).amount)
        if covered > 0:
            wallet.consume(Money(covered, wallet.currency), at=at, reference=f"lease {lease.id}")
        if covered < pending:  # cannot happen while the sums hold; never below zero anyway
            BILLING_SHORTFALLS.inc()
            log.error(
                "lease %s: %s consumed, %s left in wallet %s; %s %s unpaid",
                lease.id, pending, covered, wallet.id, EXACT.subtract(pending, covered),
                wallet.currency,
            )  # fmt: skip
        store.wallets.save_wallet(wallet)
        _, after = store.wallets.wallet_usage(wallet.id)
        for percent in crossed(DEFAULT_THRESHOLDS, before, after, granted):
            alert = threshold_alert(
                pool.organization_id, "", "credit", wallet.currency, Period.containing(at),
                percent, now, used=after, limit=granted, currency=wallet.currency,
            )  # fmt: skip
            if store.alerts.raise_alert(
                pool.organization_id,
                api_key_id="",
                kind="credit",
                subject=wallet.currency,
                period=Period.containing(at),
                threshold=percent,
                payload=alert["payload"],
            ):
                announce([alert], {alert["id"]})
        lease.amount = EXACT.subtract(lease.amount, pending)
        lease.pending = _ZERO
        self._set_leased(session, pool, row, max(EXACT.subtract(row.leased, pending), _ZERO))


def _pool(
    kind: str, organization_id: str, currency: str, scope: str, period_start: datetime | None
) -> Pool:
    if kind == "wallet":
        return Pool.wallet(organization_id, currency)
    assert period_start is not None
    return Pool.budget(organization_id, currency, scope, period_start)
