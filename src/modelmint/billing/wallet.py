"""Prepaid wallets: credit grants, reservations, and an append-only ledger.

A wallet holds *grants* of credit: paid (a top-up) or promotional, each with an
amount, a priority and an optional expiry. Credit is spent grant by grant in
**spend order**: lower priority number first, then the grant that expires soonest
(never-expiring grants last), then the oldest. By default promotional credit is
spent before paid credit (priority 0 vs 10), because it usually expires and can
never be refunded, which is what customers expect.

``reserve`` holds credit for a piece of work and ``settle`` spends it later: a
reservation takes the funds out of the usable balance (``RESERVATION`` entries);
settling gives them back (``RELEASE``) and consumes the actual cost from the same
grants first (``CONSUMPTION``); ``release`` cancels a reservation outright.

Ledger. Every change is an entry whose signed ``amount`` is the change to the
usable balance of one grant. Nothing is ever updated or deleted, so:

* ``balance`` (usable now) == the sum of all entry amounts, and each grant's
  remaining credit is the sum of its entries (``replay``);
* money spent == minus the sum of ``CONSUMPTION`` entries, whatever was reserved.

The balance never goes below zero: a reservation, settlement or consumption that
the usable balance cannot cover raises ``InsufficientCredit`` and records nothing.
Expired credit is unusable; its remainder is written off by an ``EXPIRY`` entry the
next time the wallet is touched (entries stay in time order). Funds reserved
before an expiry may still settle the request they were reserved for.

This is the single-writer domain model; making concurrent gateways agree (row
locks) is the billing store's job, on top of these rules. The gateway itself does not
put its per-request holds in the ledger: ``HoldStore.hold_credit`` keeps
them as a sum on the wallet row (one statement per request), and the metering
writer then ``consume``s each request's actual cost. A stored wallet is rebuilt
with ``Wallet.restore`` from a *snapshot* (live grants with what is left of them,
the balance, the ledger's length, the reservations the caller will touch) rather
than by replaying its whole ledger, so that a request's reserve and settle cost the
same on the millionth request as on the first; ``ledger`` then holds the entries
recorded since the restore, numbered on from the stored ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from modelmint.billing.errors import (
    CurrencyMismatch,
    InsufficientCredit,
    InvalidWalletOperation,
    UnknownReservation,
)
from modelmint.billing.exact import EXACT, exact_sum
from modelmint.billing.money import Money
from modelmint.billing.periods import utc

__all__ = [
    "PAID_PRIORITY",
    "PROMOTIONAL_PRIORITY",
    "CreditGrant",
    "EntryKind",
    "GrantKind",
    "LedgerEntry",
    "Reservation",
    "Wallet",
    "WalletSnapshot",
    "replay",
]

PROMOTIONAL_PRIORITY = 0
PAID_PRIORITY = 10
_ZERO = Decimal(0)


class GrantKind(StrEnum):
    PAID = "paid"
    PROMOTIONAL = "promotional"


class EntryKind(StrEnum):
    GRANT = "grant"
    TOP_UP = "top_up"
    RESERVATION = "reservation"
    RELEASE = "release"
    CONSUMPTION = "consumption"
    EXPIRY = "expiry"


@dataclass(frozen=True, slots=True)
class CreditGrant:
    id: str
    kind: GrantKind
    amount: Money
    priority: int
    granted_at: datetime
    expires_at: datetime | None
    sequence: int  # breaks ties between grants made at the same instant

    def usable_at(self, instant: datetime) -> bool:
        return self.expires_at is None or instant < self.expires_at

    @property
    def spend_order(self) -> tuple[int, int, datetime, datetime, int]:
        """Sort key: priority, then soonest expiry (none last), then oldest."""
        expiry = self.expires_at
        return (
            self.priority,
            0 if expiry is not None else 1,
            expiry if expiry is not None else self.granted_at,
            self.granted_at,
            self.sequence,
        )


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One signed change to the usable credit of one grant."""

    sequence: int
    at: datetime
    kind: EntryKind
    grant_id: str
    amount: Money
    reference: str | None = None  # reservation id, request id, payment id ...


@dataclass(frozen=True, slots=True)
class Reservation:
    """Funds held for one request: ``holds`` lists (grant id, amount) in spend order."""

    id: str
    amount: Money
    holds: tuple[tuple[str, Decimal], ...]
    created_at: datetime
    reference: str | None = None


def replay(entries: Iterable[LedgerEntry]) -> dict[str, Decimal]:
    """Each grant's usable credit rebuilt from the ledger alone."""
    remaining: dict[str, Decimal] = {}
    for entry in entries:
        remaining[entry.grant_id] = EXACT.add(
            remaining.get(entry.grant_id, _ZERO), entry.amount.amount
        )
    return remaining


@dataclass(frozen=True, slots=True)
class WalletSnapshot:
    """What ``Wallet.restore`` needs: the stored state, without the ledger's history.

    ``grants`` pairs each grant the caller may touch with its remaining usable credit;
    a grant left out (spent, or expired and written off) is never touched again.
    """

    wallet_id: str
    currency: str
    balance: Decimal
    last_sequence: int
    last_at: datetime | None
    grant_count: int
    reservation_count: int
    grants: tuple[tuple[CreditGrant, Decimal], ...]
    reservations: tuple[Reservation, ...]


class Wallet:
    """The prepaid credit of one organisation, in one currency."""

    def __init__(self, wallet_id: str, currency: str) -> None:
        self.id = wallet_id
        self.currency = Money.zero(currency).currency
        self._grants: dict[str, CreditGrant] = {}
        self._remaining: dict[str, Decimal] = {}  # usable: not held, not written off
        self._balance = _ZERO  # running sum of the ledger, so reading it is O(1)
        self._reservations: dict[str, Reservation] = {}
        self._ledger: list[LedgerEntry] = []
        self._last: datetime | None = None
        self._reservation_count = 0
        self._grant_count = 0
        self._base_sequence = 0  # ledger entries stored before this instance was restored

    @classmethod
    def restore(cls, snapshot: WalletSnapshot) -> Wallet:
        """The wallet a snapshot describes; entries recorded next continue its numbering."""
        wallet = cls(snapshot.wallet_id, snapshot.currency)
        for grant, remaining in snapshot.grants:
            if remaining < 0 or remaining > grant.amount.amount:
                raise InvalidWalletOperation(
                    f"wallet {wallet.id}: grant {grant.id} cannot have {remaining} left"
                )
            wallet._grants[grant.id] = grant
            wallet._remaining[grant.id] = remaining
        for reservation in snapshot.reservations:
            for grant_id, _ in reservation.holds:
                if grant_id not in wallet._grants:
                    raise InvalidWalletOperation(
                        f"wallet {wallet.id}: reservation {reservation.id} holds credit of "
                        f"grant {grant_id}, which the snapshot left out"
                    )
            wallet._reservations[reservation.id] = reservation
        wallet._balance = snapshot.balance
        wallet._base_sequence = snapshot.last_sequence
        wallet._last = snapshot.last_at
        wallet._grant_count = snapshot.grant_count
        wallet._reservation_count = snapshot.reservation_count
        return wallet

    # -- reading --------------------------------------------------------------------------

    @property
    def ledger(self) -> tuple[LedgerEntry, ...]:
        """Entries recorded by this instance (all of them, unless it was restored)."""
        return tuple(self._ledger)

    @property
    def last_sequence(self) -> int:
        """The sequence number of the newest entry of the whole ledger (0: empty)."""
        return self._base_sequence + len(self._ledger)

    @property
    def last_at(self) -> datetime | None:
        """When the newest entry was recorded: later operations may not be dated earlier."""
        return self._last

    @property
    def grant_count(self) -> int:
        return self._grant_count

    @property
    def reservation_count(self) -> int:
        return self._reservation_count

    @property
    def grants(self) -> tuple[CreditGrant, ...]:
        return tuple(self._grants.values())

    @property
    def open_reservations(self) -> tuple[Reservation, ...]:
        return tuple(self._reservations.values())

    @property
    def balance(self) -> Money:
        """Usable credit as recorded; always equal to the sum of the ledger."""
        return Money(self._balance, self.currency)

    @property
    def reserved(self) -> Money:
        """Credit held by open reservations (not part of ``balance``)."""
        return Money(exact_sum(r.amount.amount for r in self._reservations.values()), self.currency)

    def remaining(self, grant_id: str) -> Money:
        return Money(self._remaining[grant_id], self.currency)

    def available(self, at: datetime) -> Money:
        """Credit usable at ``at``: ``balance`` minus what has expired by then."""
        moment = utc(at)
        return Money(exact_sum(amount for _, amount in self._usable(moment)), self.currency)

    # -- credit in ----------------------------------------------------------------------

    def grant(
        self,
        amount: Money,
        *,
        at: datetime,
        kind: GrantKind = GrantKind.PROMOTIONAL,
        priority: int | None = None,
        expires_at: datetime | None = None,
        reference: str | None = None,
    ) -> CreditGrant:
        """Add a grant of ``amount``; promotional unless ``kind`` says otherwise."""
        moment = self._tick(at)
        value = self._amount(amount, "grant")
        if value.is_zero:
            raise InvalidWalletOperation("a grant must be positive")
        if priority is None:
            priority = PAID_PRIORITY if kind is GrantKind.PAID else PROMOTIONAL_PRIORITY
        expiry = None if expires_at is None else utc(expires_at, "expiry")
        if expiry is not None and expiry <= moment:
            raise InvalidWalletOperation(f"grant expires ({expiry.isoformat()}) before it starts")
        self._expire_due(moment)
        self._grant_count += 1
        sequence = self._grant_count
        grant = CreditGrant(f"grant_{sequence}", kind, value, priority, moment, expiry, sequence)
        self._grants[grant.id] = grant
        self._remaining[grant.id] = _ZERO
        entry_kind = EntryKind.TOP_UP if kind is GrantKind.PAID else EntryKind.GRANT
        self._record(entry_kind, grant.id, value.amount, moment, reference)
        return grant

    def top_up(
        self,
        amount: Money,
        *,
        at: datetime,
        priority: int = PAID_PRIORITY,
        expires_at: datetime | None = None,
        reference: str | None = None,
    ) -> CreditGrant:
        """A paid grant: credit the customer bought (``reference``: the payment)."""
        return self.grant(
            amount,
            at=at,
            kind=GrantKind.PAID,
            priority=priority,
            expires_at=expires_at,
            reference=reference,
        )

    # -- credit out ---------------------------------------------------------------------

    def reserve(self, amount: Money, *, at: datetime, reference: str | None = None) -> Reservation:
        """Hold ``amount`` for a request; ``InsufficientCredit`` if it cannot be covered."""
        moment = self._tick(at)
        value = self._amount(amount, "reservation")
        self._cover(value.amount, moment)
        self._expire_due(moment)
        self._reservation_count += 1
        reservation_id = f"res_{self._reservation_count}"
        holds = self._take(value.amount, EntryKind.RESERVATION, moment, reservation_id)
        reservation = Reservation(reservation_id, value, tuple(holds), moment, reference)
        self._reservations[reservation_id] = reservation
        return reservation

    def settle(self, reservation_id: str, actual: Money, *, at: datetime) -> Money:
        """Consume ``actual`` for a reservation and release the rest of it.

        The actual cost comes from the reserved grants first; if it exceeds the
        reservation, the excess comes from usable credit, and if that cannot cover
        it, ``InsufficientCredit`` is raised and the reservation stays open.
        """
        reservation = self._reservation(reservation_id)
        moment = self._tick(at)
        value = self._amount(actual, "settlement")
        excess = EXACT.subtract(value.amount, reservation.amount.amount)
        if excess > 0:
            self._cover(excess, moment)
        self._expire_due(moment)
        del self._reservations[reservation_id]
        for grant_id, held in reservation.holds:
            self._record(EntryKind.RELEASE, grant_id, held, moment, reservation_id)
        left = value.amount
        for grant_id, held in reservation.holds:
            take = min(left, held)
            self._record(EntryKind.CONSUMPTION, grant_id, EXACT.minus(take), moment, reservation_id)
            left = EXACT.subtract(left, take)
        if left > 0:
            self._take(left, EntryKind.CONSUMPTION, moment, reservation_id)
        self._expire_due(moment)  # what was held on a grant that expired meanwhile
        return value

    def release(self, reservation_id: str, *, at: datetime) -> None:
        """Cancel a reservation (the request failed before it cost anything)."""
        reservation = self._reservation(reservation_id)
        moment = self._tick(at)
        self._expire_due(moment)
        del self._reservations[reservation_id]
        for grant_id, held in reservation.holds:
            self._record(EntryKind.RELEASE, grant_id, held, moment, reservation_id)
        self._expire_due(moment)

    def consume(self, amount: Money, *, at: datetime, reference: str | None = None) -> Money:
        """Spend ``amount`` now, without a reservation."""
        moment = self._tick(at)
        value = self._amount(amount, "consumption")
        self._cover(value.amount, moment)
        self._expire_due(moment)
        self._take(value.amount, EntryKind.CONSUMPTION, moment, reference)
        return value

    def expire(self, at: datetime) -> list[LedgerEntry]:
        """Write off credit that has expired by ``at``; returns the new entries."""
        moment = self._tick(at)
        before = len(self._ledger)
        self._expire_due(moment)
        return self._ledger[before:]

    # -- internals ------------------------------------------------------------------------

    def _tick(self, at: datetime) -> datetime:
        moment = utc(at)
        if self._last is not None and moment < self._last:
            raise InvalidWalletOperation(
                f"wallet {self.id}: {moment.isoformat()} is before the latest ledger entry "
                f"({self._last.isoformat()}); the ledger is append-only and in time order"
            )
        return moment

    def _amount(self, amount: Money, what: str) -> Money:
        if not isinstance(amount, Money):
            raise TypeError(f"{what} amount must be Money, got {type(amount).__name__}")
        if amount.currency != self.currency:
            raise CurrencyMismatch(f"{what} in {amount.currency} for a {self.currency} wallet")
        if amount.is_negative:
            raise InvalidWalletOperation(f"{what} amount must not be negative, got {amount}")
        return amount

    def _reservation(self, reservation_id: str) -> Reservation:
        reservation = self._reservations.get(reservation_id)
        if reservation is None:
            raise UnknownReservation(f"wallet {self.id}: no open reservation {reservation_id!r}")
        return reservation

    def _usable(self, moment: datetime) -> list[tuple[CreditGrant, Decimal]]:
        ordered = sorted(self._grants.values(), key=lambda g: g.spend_order)
        return [
            (grant, self._remaining[grant.id])
            for grant in ordered
            if grant.usable_at(moment) and self._remaining[grant.id] > 0
        ]

    def _cover(self, needed: Decimal, moment: datetime) -> None:
        available = exact_sum(amount for _, amount in self._usable(moment))
        if needed > available:
            raise InsufficientCredit(
                f"wallet {self.id}: {needed:f} {self.currency} needed, "
                f"{available:f} {self.currency} available",
                needed=needed,
                available=available,
            )

    def _take(
        self, amount: Decimal, kind: EntryKind, moment: datetime, reference: str | None
    ) -> list[tuple[str, Decimal]]:
        taken: list[tuple[str, Decimal]] = []
        left = amount
        for grant, remaining in self._usable(moment):
            if left <= 0:
                break
            take = min(left, remaining)
            self._record(kind, grant.id, EXACT.minus(take), moment, reference)
            taken.append((grant.id, take))
            left = EXACT.subtract(left, take)
        assert left == 0, "callers check coverage first"
        return taken

    def _expire_due(self, moment: datetime) -> None:
        due = sorted(
            (g for g in self._grants.values() if not g.usable_at(moment)),
            key=lambda g: g.spend_order,
        )
        for grant in due:
            remaining = self._remaining[grant.id]
            if remaining > 0:
                assert grant.expires_at is not None
                # Dated at the expiry itself unless the ledger has moved past it.
                stamp = (
                    grant.expires_at if self._last is None else max(grant.expires_at, self._last)
                )
                self._record(EntryKind.EXPIRY, grant.id, EXACT.minus(remaining), stamp, None)

    def _record(
        self, kind: EntryKind, grant_id: str, delta: Decimal, at: datetime, reference: str | None
    ) -> None:
        if delta.is_zero():
            return
        remaining = EXACT.add(self._remaining[grant_id], delta)
        assert remaining >= 0, "a grant's usable credit never goes below zero"
        self._remaining[grant_id] = remaining
        self._balance = EXACT.add(self._balance, delta)
        entry = LedgerEntry(
            self.last_sequence + 1, at, kind, grant_id, Money(delta, self.currency), reference
        )
        self._ledger.append(entry)
        self._last = at
