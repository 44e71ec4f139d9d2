"""The lease book: admission from memory, refills, fair shares, check-ins, fallbacks.

The store is the in-memory double (``tests.support.leases``); the database store has
its own integration tests, and the whole path runs in the paid-cluster tests.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from modelmint.charging.leases import CreditLeases, Pool, fair_share
from tests.support.leases import MemoryLeaseStore

D = Decimal
WALLET = Pool.wallet("org_1", "USD")
BUDGET = Pool.budget("org_1", "USD", "", datetime(2026, 12, 1, tzinfo=UTC))
WORST = D("0.01")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def book(store: MemoryLeaseStore, clock: Clock | None = None) -> CreditLeases:
    return CreditLeases(store, ttl_s=30, checkin_s=1, clock=clock or Clock())


def test_the_fair_share_leaves_room_for_a_newcomer() -> None:
    assert fair_share(D("10"), 0) == D("5")
    assert fair_share(D("10"), 1) == D("3.333333333333")  # rounded down, never up
    assert fair_share(D("0"), 0) == 0
    assert fair_share(D("-1"), 3) == 0


async def test_the_first_request_opens_a_lease_and_later_ones_need_no_store() -> None:
    store = MemoryLeaseStore(free={WALLET: D("100")})
    leases = book(store)
    assert leases.take([WALLET], WORST) is None  # no lease yet: the slow path
    taken, fallback = await leases.take_or_fall_back([WALLET], WORST)
    assert fallback == [] and list(taken) == [WALLET]
    assert store.calls == ["open"]
    assert store.leased(WALLET) == 8 * WORST  # the minimum block: eight worst cases
    for _ in range(3):
        assert leases.take([WALLET], WORST) == (taken[WALLET],)
    assert store.calls == ["open"]
    [(lease_id, free, inflight)] = leases.snapshot().values()
    assert lease_id == taken[WALLET]
    assert (free, inflight) == (4 * WORST, 4)


async def test_a_settled_request_gives_back_its_worst_case_less_its_charge() -> None:
    store = MemoryLeaseStore(free={WALLET: D("100")})
    leases = book(store)
    taken, _ = await leases.take_or_fall_back([WALLET], WORST)
    leases.settled([([taken[WALLET]], WORST, D("0.004"))])
    _, free, inflight = leases.snapshot()[WALLET]
    assert (free, inflight) == (8 * WORST - D("0.004"), 0)
    # A request whose usage could not be stored keeps its worst case spent.
    again = leases.take([WALLET], WORST)
    assert again is not None
    leases.lost(again)
    _, free_after, inflight = leases.snapshot()[WALLET]
    assert (free_after, inflight) == (free - WORST, 0)
    # One refused before it ran gets all of it back.
    third = leases.take([WALLET], WORST)
    assert third is not None
    leases.give_back(third, WORST)
    assert leases.snapshot()[WALLET][1:] == (free_after, 0)


async def test_a_lease_running_low_is_refilled_once_in_the_background() -> None:
    store = MemoryLeaseStore(free={WALLET: D("100")})
    leases = book(store)
    await leases.take_or_fall_back([WALLET], WORST)
    for _ in range(3):
        leases.take([WALLET], WORST)
    assert store.calls == ["open"]  # half the block is left: not yet
    leases.take([WALLET], WORST)  # below half: a refill starts, the request does not wait
    assert store.calls == ["open"]
    await leases.drain()
    assert store.calls == ["open", "renew"]
    _, free, _ = leases.snapshot()[WALLET]
    assert free == 2 * 8 * WORST  # topped up to twice its target


async def test_requests_finding_the_lease_dry_share_one_refill() -> None:
    store = MemoryLeaseStore(free={WALLET: D("100")})
    leases = book(store)
    await leases.take_or_fall_back([WALLET], D("0.001"))
    store.gate = threading.Event()  # hold the refill until every request waits on it
    many = [asyncio.create_task(leases.take_or_fall_back([WALLET], D("0.002"))) for _ in range(5)]
    await asyncio.sleep(0.05)
    store.gate.set()
    results = await asyncio.gather(*many)
    assert all(fallback == [] for _, fallback in results)
    assert store.calls.count("renew") == 1


async def test_a_wallet_too_small_for_a_block_is_held_per_request() -> None:
    # Half of 0.15 is below eight worst cases of 0.01: leasing would strand credit.
    store = MemoryLeaseStore(free={WALLET: D("0.15")})
    leases = book(store)
    taken, fallback = await leases.take_or_fall_back([WALLET], WORST)
    assert taken == {} and fallback == [WALLET]
    assert store.leased(WALLET) == 0


async def test_every_pool_or_none_is_taken_from() -> None:
    store = MemoryLeaseStore(free={WALLET: D("100"), BUDGET: D("0.1")})
    leases = book(store)
    taken, fallback = await leases.take_or_fall_back([WALLET, BUDGET], WORST)
    assert list(taken) == [WALLET] and fallback == [BUDGET]
    before = leases.snapshot()[WALLET]
    assert leases.take([WALLET, BUDGET], WORST) is None  # the budget has no lease
    assert leases.snapshot()[WALLET] == before  # and the wallet's was not touched


async def test_a_lease_is_admitted_from_only_for_half_its_life_without_a_renewal() -> None:
    clock = Clock()
    store = MemoryLeaseStore(free={WALLET: D("100")})
    leases = book(store, clock)
    await leases.take_or_fall_back([WALLET], WORST)
    clock.now += 14.9
    assert leases.take([WALLET], WORST) is not None
    clock.now += 0.2  # 15.1 s: the other half is for requests in flight to be charged
    assert leases.take([WALLET], WORST) is None
    store.fail = True  # and the database is gone: the slow path fails, nothing admitted
    with pytest.raises(ConnectionError):
        await leases.take_or_fall_back([WALLET], WORST)


async def test_a_check_in_sizes_a_lease_to_the_spend_rate() -> None:
    clock = Clock()
    store = MemoryLeaseStore(free={WALLET: D("1000")})
    leases = book(store, clock)
    await leases.take_or_fall_back([WALLET], WORST)
    clock.now += 1.0
    for _ in range(23):  # 24 worst cases in the last second
        leases.take([WALLET], WORST)
        await leases.drain()
    await leases.checkin()
    _, free, inflight = leases.snapshot()[WALLET]
    # two seconds of that rate (0.48), above the minimum block of eight (0.08)
    assert free == D("0.48") and inflight == 24
    assert store.leased(WALLET) == D("0.48") + 24 * WORST


async def test_an_idle_lease_shrinks_to_one_block_and_is_handed_back_later() -> None:
    clock = Clock()
    store = MemoryLeaseStore(free={WALLET: D("100")})
    leases = CreditLeases(
        store, ttl_s=30, checkin_s=1, idle_shrink_s=2, idle_close_s=4, clock=clock
    )
    for _ in range(20):  # a busy second: the lease grows to two seconds of that rate
        taken, _ = await leases.take_or_fall_back([WALLET], WORST)
        leases.settled([([taken[WALLET]], WORST, WORST)])
        store.consume(taken[WALLET], WORST)
    await leases.drain()  # the refills those takes started
    clock.now += 1
    await leases.checkin()
    assert leases.snapshot()[WALLET][1] == 40 * WORST
    clock.now += 1
    await leases.checkin()  # one idle second: a pause, the lease stays as it is
    assert leases.snapshot()[WALLET][1] == 40 * WORST
    clock.now += 1
    await leases.checkin()  # two: it keeps one minimum block for the next request
    assert leases.snapshot()[WALLET][1] == 8 * WORST
    clock.now += 1
    await leases.checkin()
    assert leases.snapshot()  # three idle seconds: still kept
    clock.now += 1
    await leases.checkin()  # four: closed, its rest back in the pool
    assert leases.snapshot() == {}
    assert store.leases == {} and store.free[WALLET] == D("100") - 20 * WORST


async def test_a_low_pool_makes_holders_hand_back_what_they_have_not_spent() -> None:
    store = MemoryLeaseStore(free={WALLET: D("1")})
    first, second = book(store), book(store)
    await first.take_or_fall_back([WALLET], WORST)  # 0.08 of the 1.00
    first.take([WALLET], WORST)
    store.free[WALLET] = D("0.05")  # others' holds took most of the rest meanwhile
    await first.checkin()
    _, free, inflight = first.snapshot()[WALLET]
    assert free == 0 and inflight == 2  # what two requests may still cost stays leased
    assert store.leased(WALLET) == 2 * WORST
    # Until the pool recovers, the holder falls back to per-request holds too.
    assert first.take([WALLET], WORST) is None
    assert (await first.take_or_fall_back([WALLET], WORST))[1] == [WALLET]
    assert (await second.take_or_fall_back([WALLET], WORST))[1] == [WALLET]


async def test_close_hands_every_lease_back() -> None:
    store = MemoryLeaseStore(free={WALLET: D("100"), BUDGET: D("50")})
    leases = book(store)
    await leases.start()
    await leases.take_or_fall_back([WALLET, BUDGET], WORST)
    await leases.close()
    assert store.leases == {}
    assert store.free == {WALLET: D("100"), BUDGET: D("50")}
