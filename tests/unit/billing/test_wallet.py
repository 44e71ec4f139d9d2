"""Wallets: spend order, reservations, expiry, and a ledger that explains the balance."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.billing import (
    CurrencyMismatch,
    EntryKind,
    GrantKind,
    InsufficientCredit,
    InvalidWalletOperation,
    Money,
    UnknownReservation,
    Wallet,
)
from modelmint.billing.wallet import WalletSnapshot, replay

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


def ledger_sum(wallet: Wallet) -> Money:
    return Money.total((e.amount for e in wallet.ledger), "USD")


def test_reserve_then_settle_consumes_the_actual_and_releases_the_rest() -> None:
    wallet = Wallet("w", "USD")
    wallet.top_up(usd("10"), at=at(0), reference="pay_1")
    reservation = wallet.reserve(usd("3"), at=at(1), reference="req_1")
    assert (wallet.balance, wallet.reserved) == (usd("7"), usd("3"))
    wallet.settle(reservation.id, usd("1.25"), at=at(2))
    assert (wallet.balance, wallet.reserved) == (usd("8.75"), usd("0"))
    assert [(e.kind, e.amount) for e in wallet.ledger] == [
        (EntryKind.TOP_UP, usd("10")),
        (EntryKind.RESERVATION, usd("-3")),
        (EntryKind.RELEASE, usd("3")),
        (EntryKind.CONSUMPTION, usd("-1.25")),
    ]
    assert wallet.balance == ledger_sum(wallet)


def test_sub_cent_request_charges_are_consumed_exactly() -> None:
    wallet = Wallet("w", "USD")
    wallet.top_up(usd("1"), at=at(0))
    for _ in range(3):
        wallet.consume(Money.of("0.00000555", "USD"), at=at(1))
    assert wallet.balance == Money.of("0.99998335", "USD")


def test_insufficient_credit_refuses_and_changes_nothing() -> None:
    wallet = Wallet("w", "USD")
    wallet.top_up(usd("5"), at=at(0))
    held = wallet.reserve(usd("4"), at=at(1))
    before = wallet.ledger
    with pytest.raises(InsufficientCredit) as caught:
        wallet.reserve(usd("1.01"), at=at(2))
    assert (caught.value.needed, caught.value.available) == (Decimal("1.01"), Decimal("1"))
    assert caught.value.status_code == 402
    with pytest.raises(InsufficientCredit):
        wallet.consume(usd("2"), at=at(2))
    with pytest.raises(InsufficientCredit):
        wallet.settle(held.id, usd("5.01"), at=at(2))  # 1.01 beyond the reservation
    assert wallet.ledger == before
    assert (wallet.balance, wallet.reserved) == (usd("1"), usd("4"))
    assert wallet.open_reservations == (held,)


def test_a_settlement_above_the_reservation_takes_the_excess_from_the_balance() -> None:
    wallet = Wallet("w", "USD")
    wallet.top_up(usd("5"), at=at(0))
    held = wallet.reserve(usd("1"), at=at(1))
    wallet.settle(held.id, usd("1.50"), at=at(2))
    assert wallet.balance == usd("3.50")


def test_release_gives_everything_back_and_reservations_close_once() -> None:
    wallet = Wallet("w", "USD")
    wallet.top_up(usd("5"), at=at(0))
    held = wallet.reserve(usd("2"), at=at(1))
    wallet.release(held.id, at=at(2))
    assert wallet.balance == usd("5")
    with pytest.raises(UnknownReservation):
        wallet.settle(held.id, usd("1"), at=at(3))
    with pytest.raises(UnknownReservation):
        wallet.release("res_999", at=at(3))


def test_promotional_credit_is_spent_before_paid_credit() -> None:
    wallet = Wallet("w", "USD")
    paid = wallet.top_up(usd("10"), at=at(0))
    promo = wallet.grant(usd("3"), at=at(1))  # default promotional priority 0 < 10
    wallet.consume(usd("4"), at=at(2))
    assert (wallet.remaining(promo.id), wallet.remaining(paid.id)) == (usd("0"), usd("9"))


def test_same_priority_spends_the_soonest_expiry_then_the_oldest() -> None:
    wallet = Wallet("w", "USD")
    forever = wallet.grant(usd("1"), at=at(0), priority=1)
    late = wallet.grant(usd("1"), at=at(0), priority=1, expires_at=at(100))
    soon = wallet.grant(usd("1"), at=at(1), priority=1, expires_at=at(50))
    old = wallet.grant(usd("1"), at=at(2), priority=1, expires_at=at(100))
    order = []
    for step in range(4):
        wallet.consume(usd("1"), at=at(3 + step))
        order.append(wallet.ledger[-1].grant_id)
    assert order == [soon.id, late.id, old.id, forever.id]


def test_expired_credit_cannot_be_spent_and_is_written_off() -> None:
    wallet = Wallet("w", "USD")
    promo = wallet.grant(usd("5"), at=at(0), expires_at=at(24))
    assert wallet.available(at(25)) == usd("0")
    with pytest.raises(InsufficientCredit):
        wallet.reserve(usd("1"), at=at(25))
    entries = wallet.expire(at(25))
    assert [(e.kind, e.grant_id, e.amount, e.at) for e in entries] == [
        (EntryKind.EXPIRY, promo.id, usd("-5"), at(24))
    ]
    assert wallet.balance == usd("0") == ledger_sum(wallet)


def test_funds_reserved_before_an_expiry_still_settle_that_request() -> None:
    wallet = Wallet("w", "USD")
    promo = wallet.grant(usd("5"), at=at(0), expires_at=at(24))
    held = wallet.reserve(usd("2"), at=at(23))
    wallet.settle(held.id, usd("1.5"), at=at(25))
    assert wallet.remaining(promo.id) == usd("0")
    kinds = [(e.kind, e.amount) for e in wallet.ledger]
    assert (EntryKind.CONSUMPTION, usd("-1.5")) in kinds
    assert sum(1 for kind, _ in kinds if kind is EntryKind.EXPIRY) == 2  # 3 unheld, 0.5 leftover
    assert wallet.balance == usd("0") == ledger_sum(wallet)


def test_wallet_input_is_checked() -> None:
    wallet = Wallet("w", "USD")
    with pytest.raises(CurrencyMismatch):
        wallet.top_up(Money.parse("1", "EUR"), at=at(0))
    with pytest.raises(InvalidWalletOperation, match="positive"):
        wallet.grant(usd("0"), at=at(0))
    with pytest.raises(InvalidWalletOperation, match="negative"):
        wallet.consume(usd("-1"), at=at(0))
    with pytest.raises(InvalidWalletOperation, match="before it starts"):
        wallet.grant(usd("1"), at=at(5), expires_at=at(5))
    with pytest.raises(TypeError):
        wallet.consume(0.5, at=at(0))  # type: ignore[arg-type]
    wallet.top_up(usd("1"), at=at(10))
    with pytest.raises(InvalidWalletOperation, match="append-only"):
        wallet.consume(usd("1"), at=at(9))


# -- properties ---------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("50"), places=6)


@dataclass
class Model:
    """Reference for spend order: drain usable grants sorted by (priority, expiry, age)."""

    grants: list[tuple[str, int, datetime | None, int]]  # id, priority, expiry, age
    remaining: dict[str, Decimal]

    def consume(self, amount: Decimal, moment: datetime) -> None:
        def key(g: tuple[str, int, datetime | None, int]) -> tuple[int, int, datetime, int]:
            _, priority, expiry, age = g
            return (priority, expiry is None, expiry or T0, age)

        for grant_id, _, expiry, _ in sorted(self.grants, key=key):
            if expiry is not None and moment >= expiry:
                continue
            take = min(amount, self.remaining[grant_id])
            self.remaining[grant_id] -= take
            amount -= take
        assert amount == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(amounts, st.integers(0, 3), st.one_of(st.none(), st.integers(1, 40))),
        min_size=1,
        max_size=8,
    ),
    st.lists(st.tuples(amounts, st.integers(0, 5)), max_size=10),
)
def test_consumption_follows_priority_then_expiry_then_age(
    grants: list[tuple[Decimal, int, int | None]], spends: list[tuple[Decimal, int]]
) -> None:
    wallet = Wallet("w", "USD")
    model = Model([], {})
    for age, (amount, priority, expiry_hours) in enumerate(grants):
        expiry = None if expiry_hours is None else at(age + expiry_hours)
        grant = wallet.grant(Money(amount, "USD"), at=at(age), priority=priority, expires_at=expiry)
        model.grants.append((grant.id, priority, expiry, age))
        model.remaining[grant.id] = amount
    clock = len(grants)
    for amount, pause in spends:
        clock += pause
        moment = at(clock)
        try:
            wallet.consume(Money(amount, "USD"), at=moment)
        except InsufficientCredit:
            continue
        model.consume(amount, moment)
        for grant_id, expected in model.remaining.items():
            grant = next(g for g in wallet.grants if g.id == grant_id)
            if grant.usable_at(moment):
                assert wallet.remaining(grant_id).amount == expected


operations = st.one_of(
    st.tuples(
        st.just("grant"), amounts, st.integers(0, 3), st.one_of(st.none(), st.integers(1, 30))
    ),
    st.tuples(st.just("top_up"), amounts, st.just(10), st.none()),
    st.tuples(st.just("reserve"), amounts, st.just(0), st.none()),
    st.tuples(st.just("settle"), amounts, st.integers(0, 10), st.none()),
    st.tuples(st.just("release"), amounts, st.integers(0, 10), st.none()),
    st.tuples(st.just("consume"), amounts, st.just(0), st.none()),
    st.tuples(st.just("wait"), amounts, st.integers(1, 20), st.none()),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(operations, max_size=40))
def test_a_wallet_never_goes_negative_and_its_ledger_explains_it(
    ops: list[tuple[str, Decimal, int, int | None]],
) -> None:
    wallet = Wallet("w", "USD")
    clock = 0
    granted = Decimal(0)
    for name, amount, number, hours in ops:
        money = Money(amount, "USD")
        moment = at(clock)
        before = (wallet.ledger, wallet.open_reservations)
        try:
            if name == "grant":
                expiry = None if hours is None else at(clock + hours)
                wallet.grant(money, at=moment, priority=number, expires_at=expiry)
                granted += amount
            elif name == "top_up":
                wallet.top_up(money, at=moment)
                granted += amount
            elif name == "reserve":
                wallet.reserve(money, at=moment)
            elif name in ("settle", "release") and wallet.open_reservations:
                reservation = wallet.open_reservations[number % len(wallet.open_reservations)]
                if name == "settle":
                    wallet.settle(reservation.id, money, at=moment)
                else:
                    wallet.release(reservation.id, at=moment)
            elif name == "consume":
                wallet.consume(money, at=moment)
            elif name == "wait":
                clock += number
        except InsufficientCredit:
            assert (wallet.ledger, wallet.open_reservations) == before  # refused: unchanged
        ledger = wallet.ledger
        assert wallet.balance.amount >= 0
        assert wallet.balance == ledger_sum(wallet)
        assert all(wallet.remaining(g).amount == v for g, v in replay(ledger).items())
        assert all(v >= 0 for v in replay(ledger).values())
        assert [e.sequence for e in ledger] == list(range(1, len(ledger) + 1))
        assert all(a.at <= b.at for a, b in pairwise(ledger))
        spent = -sum(
            (e.amount.amount for e in ledger if e.kind is EntryKind.CONSUMPTION), Decimal(0)
        )
        expired = -sum((e.amount.amount for e in ledger if e.kind is EntryKind.EXPIRY), Decimal(0))
        # Conservation: every granted cent is usable, held, spent or expired.
        assert granted == wallet.balance.amount + wallet.reserved.amount + spent + expired
    assert all(g.kind in (GrantKind.PAID, GrantKind.PROMOTIONAL) for g in wallet.grants)


# -- restoring from a snapshot -----------------------------------------------------------


def snapshot_of(wallet: Wallet) -> WalletSnapshot:
    """What the store keeps of ``wallet``: live grants, counters, open reservations."""
    held = {grant_id for r in wallet.open_reservations for grant_id, _ in r.holds}
    return WalletSnapshot(
        wallet_id=wallet.id,
        currency=wallet.currency,
        balance=wallet.balance.amount,
        last_sequence=wallet.last_sequence,
        last_at=wallet.last_at,
        grant_count=wallet.grant_count,
        reservation_count=wallet.reservation_count,
        grants=tuple(
            (g, wallet.remaining(g.id).amount)
            for g in wallet.grants
            if wallet.remaining(g.id).amount > 0 or g.id in held
        ),
        reservations=wallet.open_reservations,
    )


operations = st.lists(
    st.tuples(
        st.sampled_from(["grant", "top_up", "reserve", "settle", "release", "consume"]),
        st.decimals(min_value=0, max_value=5, places=3, allow_nan=False),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


def apply(wallet: Wallet, step: int, op: tuple[str, Decimal, bool]) -> None:
    name, amount, expiring = op
    moment = at(step)
    expiry = moment + timedelta(hours=3) if expiring else None
    try:
        if name in ("grant", "top_up") and amount > 0:
            method = wallet.grant if name == "grant" else wallet.top_up
            method(usd(str(amount)), at=moment, expires_at=expiry)
        elif name == "reserve":
            wallet.reserve(usd(str(amount)), at=moment)
        elif name in ("settle", "release") and wallet.open_reservations:
            oldest = wallet.open_reservations[0]
            if name == "settle":
                wallet.settle(oldest.id, usd(str(min(amount, oldest.amount.amount))), at=moment)
            else:
                wallet.release(oldest.id, at=moment)
        elif name == "consume":
            wallet.consume(usd(str(amount)), at=moment)
    except InsufficientCredit:
        pass


@settings(max_examples=200, deadline=None)
@given(operations, operations)
def test_a_restored_wallet_continues_exactly_like_the_original(
    before: list[tuple[str, Decimal, bool]], after: list[tuple[str, Decimal, bool]]
) -> None:
    original = Wallet("w", "USD")
    for step, op in enumerate(before):
        apply(original, step, op)
    restored = Wallet.restore(snapshot_of(original))
    assert (restored.balance, restored.reserved) == (original.balance, original.reserved)
    done = len(original.ledger)
    for step, op in enumerate(after, start=len(before)):
        apply(original, step, op)
        apply(restored, step, op)
    assert restored.ledger == original.ledger[done:]
    assert (restored.balance, restored.reserved) == (original.balance, original.reserved)
    assert restored.last_sequence == original.last_sequence
    assert {g.id for g in restored.grants} <= {g.id for g in original.grants}
    for grant in restored.grants:
        assert restored.remaining(grant.id) == original.remaining(grant.id)


def test_a_snapshot_must_include_the_grants_its_reservations_hold() -> None:
    wallet = Wallet("w", "USD")
    wallet.top_up(usd("5"), at=at(0))
    wallet.reserve(usd("5"), at=at(1))
    broken = replace(snapshot_of(wallet), grants=())
    with pytest.raises(InvalidWalletOperation, match="left out"):
        Wallet.restore(broken)
