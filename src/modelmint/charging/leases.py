"""Credit leases: a gateway process admits paid requests against credit it set aside.

The escrow method. A prepaid wallet (or a hard budget's month) is a *pool* of credit
shared by every gateway process. Instead of asking the database for each request, a
process leases a block of the pool (one conditional UPDATE under the pool row's
lock: the row keeps ``leased`` beside ``balance``/``held``, so ``balance - held -
leased`` never goes below zero) and admits requests against that block in memory,
exactly: a request takes its worst case (Decimal) from the lease; once its usage is
committed the metering writer has charged its actual cost through the lease's row,
in the same transaction, and gives the rest of the worst case back in memory.

Sizing. A lease aims to hold about ``horizon_s`` of this process's recent spend, and
never less than ``blocks`` worst cases (below that a lease is not worth its round
trips). The store never grants more than a fair share of what is free, ``free / (n +
2)`` with ``n`` the other open leases of the pool, so N processes share a small pool
without starving each other, and a newcomer always finds a share. When that share is
below the minimum, the pool is *low*: nothing is leased, holders hand back what they
have not spent, and requests fall back to one hold per request (``reservations``),
so the last cents of a wallet are admitted exactly as before leases existed.

Refills run in the background, one at a time per pool, when a lease falls below half
its target; requests that find their lease dry wait for that refill (single flight),
which is sized for all of them, instead of each starting another.

Expiry. Every ``checkin_s`` the process renews each lease: it extends the lease's
expiry to ``ttl_s`` ahead, posts what was consumed through it to the wallet's ledger,
resizes it to the measured spend rate (a lease idle for ``idle_shrink_s`` keeps only
one minimum block, and is handed back after ``idle_close_s``: a pause between bursts
does not make the next burst wait for refills), and learns whether the pool went low. It admits
against a lease only within half its ttl after the last successful renewal, so a
process cut off from the database stops admitting long before its lease can expire.
A process killed with SIGKILL renews nothing: once ``expires_at`` passes, any
process's sweep posts what the lease consumed (exactly what the dead process's
committed usage rows were charged) and returns the rest to the pool. A graceful
shutdown hands every lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, Context, Decimal
from typing import Any, Protocol

from modelmint.billing.exact import EXACT

__all__ = ["CreditLeases", "Granted", "LeaseLost", "LeaseStore", "Pool", "fair_share"]

log = logging.getLogger(__name__)
_ZERO = Decimal(0)
_SHARE = Context(prec=60, rounding=ROUND_FLOOR)
_QUANTUM = Decimal("1e-12")  # a lease's size needs no finer grain than this
# Refills a request waits for before it is held per request instead: each doubles the
# lease, and a refill serves every request waiting on it.
_MAX_REFILLS = 8


def fair_share(free: Decimal, others: int) -> Decimal:
    """The most one lease may take of a pool with ``free`` credit and ``others`` other
    open leases: ``free / (others + 2)``, rounded down, so that a newcomer always finds
    a share of its own and the pool is never leased dry."""
    if free <= 0:
        return _ZERO
    return _SHARE.divide(free, others + 2).quantize(_QUANTUM, rounding=ROUND_FLOOR)


@dataclass(frozen=True, slots=True)
class Pool:
    """Credit shared by every process: a prepaid wallet, or a hard budget's month."""

    kind: str  # "wallet" or "budget"
    organization_id: str
    currency: str
    scope: str = ""  # budgets: "" for the organisation, else the API key id
    period_start: datetime | None = None  # budgets: the month

    @classmethod
    def wallet(cls, organization_id: str, currency: str) -> Pool:
        return cls("wallet", organization_id, currency)

    @classmethod
    def budget(cls, organization_id: str, currency: str, scope: str, month: datetime) -> Pool:
        return cls("budget", organization_id, currency, scope, month)


@dataclass(frozen=True, slots=True)
class Granted:
    """The store's answer to opening or renewing a lease."""

    lease_id: str
    change: Decimal  # what the lease's amount moved by (negative: handed back)
    expires_at: datetime  # the lease's new expiry (wall clock)
    now: datetime  # the store's clock when it answered
    low: bool  # the pool cannot spare a minimum block: hand back, hold per request


class LeaseLost(Exception):
    """The lease was closed meanwhile (swept after an expiry): forget it."""


class LeaseStore(Protocol):
    """Where leases are kept (``charging.lease_store.DatabaseLeaseStore``)."""

    def open(self, pool: Pool, want: Decimal, minimum: Decimal) -> Granted | None:
        """A new lease of up to ``want`` (at least ``minimum``), or None when the pool
        cannot spare ``minimum`` (or has no wallet or hard budget to lease from)."""
        ...

    def renew(self, lease_id: str, pool: Pool, change: Decimal, minimum: Decimal) -> Granted:
        """Extend the lease's expiry and move its amount by up to ``change``: more within
        the fair share when positive (nothing if the share is below ``minimum``), that
        much handed back when negative. ``LeaseLost`` if the lease is closed."""
        ...

    def close(self, lease_id: str, pool: Pool) -> None:
        """Hand back what the lease still holds and close it."""
        ...


@dataclass(slots=True, eq=False)
class _Lease:
    id: str
    pool: Pool
    free: Decimal  # what admissions may still take
    deadline: float  # clock time after which nothing is admitted against it
    target: Decimal  # the size the last sizing aimed at
    unit: Decimal  # the largest worst case seen: the minimum block is ``blocks`` of these
    inflight: int = 0
    admitted: Decimal = _ZERO  # worst cases taken since the last check-in
    refilling: bool = False
    low: bool = False  # the pool said it is low: admit nothing until a check-in says not
    closing: bool = False
    idle: float = 0.0  # seconds since it last admitted a request, as of the last check-in

    def admits(self, worst: Decimal, now: float) -> bool:
        return not (self.low or self.closing) and now < self.deadline and self.free >= worst


Spawn = Callable[[Coroutine[Any, Any, None]], Any]


class CreditLeases:
    """This process's leases, one per pool, and the loop that keeps them."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        ttl_s: float,
        checkin_s: float | None = None,
        horizon_s: float = 2.0,
        blocks: int = 8,
        idle_shrink_s: float = 5.0,
        idle_close_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.ttl_s = ttl_s
        self.checkin_s = checkin_s if checkin_s is not None else min(1.0, ttl_s / 4)
        self._horizon_s = horizon_s
        self._blocks = blocks
        self._idle_shrink_s = idle_shrink_s
        self._idle_close_s = idle_close_s
        self._clock = clock
        # Taken by the event loop (admission) and the writer thread (settlement).
        self._lock = threading.Lock()
        self._leases: dict[Pool, _Lease] = {}
        self._by_id: dict[str, _Lease] = {}
        self._refills: dict[Pool, asyncio.Future[None]] = {}
        self._ops: dict[Pool, asyncio.Lock] = {}
        # Requests of each pool waiting in the slow path: a refill is sized for them all.
        self._waiting: dict[Pool, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._last_checkin = clock()

    # -- admission (the event loop) ---------------------------------------------------------

    def take(self, pools: Sequence[Pool], worst: Decimal) -> tuple[str, ...] | None:
        """Take ``worst`` from this process's lease of every pool, or from none of them
        (None: a slow path is needed). No I/O; refills start in the background."""
        now = self._clock()
        with self._lock:
            chosen = []
            for pool in pools:
                lease = self._leases.get(pool)
                if lease is None or not lease.admits(worst, now):
                    return None
                chosen.append(lease)
            due = [lease.pool for lease in chosen if self._take(lease, worst)]
        for pool in due:
            self._spawn(self._refill(pool))
        return tuple([lease.id for lease in chosen])

    def _take(self, lease: _Lease, worst: Decimal) -> bool:
        """Take ``worst`` (under the lock); whether a background refill is now due."""
        lease.free = EXACT.subtract(lease.free, worst)
        lease.inflight += 1
        lease.admitted = EXACT.add(lease.admitted, worst)
        if worst > lease.unit:
            lease.unit = worst
        # Below half its target (inexact product: only a threshold).
        if lease.free * 2 < lease.target and not lease.refilling:
            lease.refilling = True
            return True
        return False

    async def take_or_fall_back(
        self, pools: Sequence[Pool], worst: Decimal
    ) -> tuple[dict[Pool, str], list[Pool]]:
        """The slow path: for each pool, a lease id ``worst`` was taken from, or the pool
        in the second list, to be held per request. Opens or refills leases (one
        refill per pool at a time) and waits for them."""
        taken: dict[Pool, str] = {}
        fallback: list[Pool] = []
        try:
            for pool in pools:
                lease_id = await self._take_one(pool, worst)
                if lease_id is None:
                    fallback.append(pool)
                else:
                    taken[pool] = lease_id
        except BaseException:
            self.give_back(tuple(taken.values()), worst)
            raise
        return taken, fallback

    async def _take_one(self, pool: Pool, worst: Decimal) -> str | None:
        self._waiting[pool] = self._waiting.get(pool, 0) + 1
        try:
            for _ in range(_MAX_REFILLS):
                taken = self.take((pool,), worst)
                if taken is not None:
                    return taken[0]
                with self._lock:
                    lease = self._leases.get(pool)
                    if lease is not None and lease.low:
                        return None
                    if lease is not None:
                        lease.unit = max(lease.unit, worst)
                await self._refill(pool, worst)
                with self._lock:
                    lease = self._leases.get(pool)
                    if lease is None or lease.low:
                        return None  # the pool cannot spare a block: hold per request
        finally:
            self._waiting[pool] -= 1
        # Refills keep giving too little for this request: its own lease's rest goes
        # back to the pool first, so that the per-request hold can use every cent.
        await self._hand_back_free(pool)
        return None

    def give_back(self, lease_ids: Sequence[str], worst: Decimal) -> None:
        """Undo ``take``: the request was refused before it ran."""
        with self._lock:
            for lease_id in lease_ids:
                lease = self._by_id.get(lease_id)
                if lease is not None:
                    lease.free = EXACT.add(lease.free, worst)
                    lease.inflight -= 1
                    lease.admitted = max(EXACT.subtract(lease.admitted, worst), _ZERO)

    # -- settlement (the metering writer's thread) -------------------------------------------

    def settled(self, requests: Sequence[tuple[Sequence[str], Decimal, Decimal]]) -> None:
        """A batch's usage committed: each request, admitted against its lease ids with
        its worst case, cost its charge: ``(lease_ids, worst, charge)`` each."""
        with self._lock:
            for lease_ids, worst, charge in requests:
                for lease_id in lease_ids:
                    lease = self._by_id.get(lease_id)
                    if lease is not None:
                        lease.inflight -= 1
                        lease.free = EXACT.add(lease.free, EXACT.subtract(worst, charge))

    def lost(self, lease_ids: Sequence[str]) -> None:
        """A request's usage could not be committed. Whether a commit that failed took
        effect is unknown, so its worst case stays spent in memory: the lease can only
        under-admit, never over-admit. The lease's row is what counts when it closes."""
        with self._lock:
            for lease_id in lease_ids:
                lease = self._by_id.get(lease_id)
                if lease is not None:
                    lease.inflight -= 1

    # -- refills ------------------------------------------------------------------------------

    def _op(self, pool: Pool) -> asyncio.Lock:
        """One store operation at a time per pool (refill, resize, hand-back, close), so
        none of them works from a lease state another is about to change."""
        lock = self._ops.get(pool)
        if lock is None:
            lock = self._ops[pool] = asyncio.Lock()
        return lock

    async def _refill(self, pool: Pool, worst: Decimal | None = None) -> None:
        """Open or top up the pool's lease, one refill per pool at a time; callers that
        arrive meanwhile wait for the running one."""
        running = self._refills.get(pool)
        if running is not None:
            await asyncio.shield(running)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refills[pool] = future
        try:
            async with self._op(pool):
                await self._grow(pool, worst)
        except Exception as exc:
            log.warning("refilling a credit lease failed: %s", exc)
            if worst is not None:
                raise  # a request waits on it: it gets the error (503 if the database is down)
        finally:
            del self._refills[pool]
            with self._lock:
                lease = self._leases.get(pool)
                if lease is not None:
                    lease.refilling = False
            future.set_result(None)

    async def _grow(self, pool: Pool, worst: Decimal | None) -> None:
        with self._lock:
            lease = self._leases.get(pool)
            if lease is not None and (lease.closing or lease.low):
                return
            unit = max(worst or _ZERO, lease.unit if lease else _ZERO)
            minimum = EXACT.multiply(unit, self._blocks)
            # Enough for every request now waiting (twice over: more are coming), so a
            # burst on a cold or dry lease is served by one refill, not one per block.
            burst = EXACT.multiply(unit, 2 * (self._waiting.get(pool, 0) + 1))
            if lease is None:
                want = max(minimum, burst)
            else:
                # Between check-ins a lease that runs dry doubles, so steady growth needs
                # few refills; a renewal asking for nothing still extends the expiry.
                inflight = EXACT.multiply(unit, lease.inflight)
                target = max(minimum, EXACT.multiply(lease.target, 2), burst + inflight)
                want = max(EXACT.subtract(target, max(lease.free, _ZERO)), _ZERO)
                target = EXACT.add(max(lease.free, _ZERO), want)
        sent = self._clock()
        if lease is None:
            granted = await asyncio.to_thread(self._store.open, pool, want, minimum)
            if granted is None:
                return
            with self._lock:
                fresh = _Lease(
                    granted.lease_id,
                    pool,
                    granted.change,
                    self._deadline(sent, granted),
                    target=granted.change,
                    unit=unit,
                    low=granted.low,
                )
                self._leases[pool] = fresh
                self._by_id[fresh.id] = fresh
            return
        try:
            granted = await asyncio.to_thread(self._store.renew, lease.id, pool, want, minimum)
        except LeaseLost:
            self._forget(lease)
            return
        self._apply(lease, granted, sent, target=max(lease.target, target))
        if granted.low:
            await self._hand_back(lease)

    def _apply(self, lease: _Lease, granted: Granted, sent: float, *, target: Decimal) -> None:
        with self._lock:
            lease.free = EXACT.add(lease.free, granted.change)
            lease.deadline = self._deadline(sent, granted)
            lease.target = target
            lease.low = granted.low

    def _deadline(self, sent: float, granted: Granted) -> float:
        """Admit until half the lease's remaining life has passed: the other half is
        for requests already admitted to finish and be charged through it."""
        left = (granted.expires_at - granted.now).total_seconds()
        return sent + max(left, 0.0) / 2

    async def _hand_back_free(self, pool: Pool) -> None:
        """Return what the pool's lease has not spent or promised (the fallback path)."""
        with self._lock:
            lease = self._leases.get(pool)
        if lease is not None:
            async with self._op(pool):
                await self._hand_back(lease)

    async def _hand_back(self, lease: _Lease) -> None:
        """``_hand_back_free`` with the pool's operation lock held. The lease then admits
        nothing until a check-in finds the pool healthy again."""
        with self._lock:
            if lease.closing:
                return
            give, lease.free = (
                max(lease.free, _ZERO),
                EXACT.subtract(lease.free, max(lease.free, _ZERO)),
            )
            lease.low = True
        if give == 0:
            return
        sent = self._clock()
        try:
            granted = await asyncio.to_thread(
                self._store.renew, lease.id, lease.pool, EXACT.minus(give), _ZERO
            )
        except LeaseLost:
            self._forget(lease)
            return
        except Exception:
            with self._lock:
                lease.free = EXACT.add(lease.free, give)
            raise
        # ``give`` left ``free`` already; only a row that held less differs from it.
        self._apply(lease, replace_change(granted, EXACT.add(granted.change, give)), sent,
                    target=lease.target)  # fmt: skip
        with self._lock:
            lease.low = True

    def _forget(self, lease: _Lease) -> None:
        with self._lock:
            if self._leases.get(lease.pool) is lease:
                del self._leases[lease.pool]
            self._by_id.pop(lease.id, None)

    # -- the check-in loop ----------------------------------------------------------------------

    async def start(self) -> None:
        self._last_checkin = self._clock()
        self._loop_task = asyncio.create_task(self._run(), name="credit-leases")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.checkin_s)
            try:
                await self.checkin()
            except Exception:
                log.exception("renewing credit leases failed; retrying at the next check-in")

    async def checkin(self) -> None:
        """Renew every lease once: resize it to the spend rate, or hand it back if idle."""
        now = self._clock()
        elapsed = max(now - self._last_checkin, 1e-3)
        self._last_checkin = now
        with self._lock:
            leases = [lease for lease in self._leases.values() if not lease.closing]
        for lease in leases:
            async with self._op(lease.pool):
                with self._lock:
                    admitted, lease.admitted = lease.admitted, _ZERO
                    lease.idle = lease.idle + elapsed if admitted == 0 else 0.0
                    if lease.idle >= self._idle_close_s and lease.inflight == 0:
                        lease.closing = True  # nothing more is admitted against it
                if lease.closing:
                    self._forget(lease)
                    await asyncio.to_thread(self._store.close, lease.id, lease.pool)
                else:
                    await self._resize(lease, admitted, elapsed)

    async def _resize(self, lease: _Lease, admitted: Decimal, elapsed: float) -> None:
        minimum = EXACT.multiply(lease.unit, self._blocks)
        rate = admitted / Decimal(repr(elapsed))  # inexact on purpose: only a size
        target = max(minimum, (rate * Decimal(repr(self._horizon_s))).quantize(lease.unit))
        with self._lock:
            free = lease.free
            if lease.low:
                change = EXACT.minus(max(free, _ZERO))  # hand back all that is not promised
            elif admitted == 0 and lease.idle < self._idle_shrink_s:
                change, target = _ZERO, lease.target  # a pause: keep it as it is
            elif admitted == 0:  # idle: keep one minimum block for the next request
                change = min(EXACT.subtract(minimum, max(free, _ZERO)), _ZERO)
            elif free < target:
                change = EXACT.subtract(target, free)
            elif free > EXACT.multiply(target, 2):
                change = EXACT.subtract(target, free)  # negative: give back the excess
            else:
                change = _ZERO
            if change < 0:
                lease.free = EXACT.add(lease.free, change)  # promised to the pool now
        sent = self._clock()
        try:
            granted = await asyncio.to_thread(self._store.renew, lease.id, lease.pool, change,
                                              minimum)  # fmt: skip
        except LeaseLost:
            self._forget(lease)
            return
        except Exception:
            if change < 0:
                with self._lock:
                    lease.free = EXACT.subtract(lease.free, change)
            raise
        if change < 0:
            granted = replace_change(granted, EXACT.subtract(granted.change, change))
        self._apply(lease, granted, sent, target=target)
        if granted.low:
            await self._hand_back(lease)

    async def drain(self) -> None:
        """Wait for the background refills started so far."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        """Stop renewing and hand every lease back (after the writer has drained)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.drain()
        with self._lock:
            leases = list(self._leases.values())
            for lease in leases:
                lease.closing = True
        for lease in leases:
            self._forget(lease)
            try:
                async with self._op(lease.pool):
                    await asyncio.to_thread(self._store.close, lease.id, lease.pool)
            except Exception as exc:  # it returns after its expiry instead
                log.warning("handing back credit lease %s failed: %s", lease.id, exc)

    # -- reading ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[Pool, tuple[str, Decimal, int]]:
        """Each pool's lease id, free credit and requests in flight (for tests and metrics)."""
        with self._lock:
            return {p: (lease.id, lease.free, lease.inflight) for p, lease in self._leases.items()}

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def replace_change(granted: Granted, change: Decimal) -> Granted:
    """``granted`` with another ``change``: what the in-memory lease still has to apply."""
    return Granted(granted.lease_id, change, granted.expires_at, granted.now, granted.low)
