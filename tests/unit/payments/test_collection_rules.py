"""The collection rules against a fake provider (behind ``PaymentProvider``), on SQLite:
crashes mid-call, stale events, and the dunning schedule's arithmetic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from modelmint import accounts
from modelmint.errors import InvalidRequest
from modelmint.payments.collection import Payments
from modelmint.payments.dunning import DunningSchedule
from modelmint.payments.provider import (
    Charge,
    ChargeStatus,
    ProviderEvent,
    SavedMethod,
    SetupStart,
)
from modelmint.storage.db import Database

START = datetime(2026, 12, 1, 9, tzinfo=UTC)


@dataclass
class FakeProvider:
    """Answers every charge with ``outcomes`` in turn; an exception is raised instead."""

    outcomes: list[Charge | Exception] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    name: str = "fake"

    @property
    def publishable_key(self) -> str | None:
        return None

    def create_customer(
        self, *, name: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        return f"cus_{name}"

    def start_setup(self, customer_id: str, *, idempotency_key: str) -> SetupStart:
        return SetupStart("seti_1", "seti_1_secret")

    def finish_setup(self, customer_id: str, setup_intent_id: str) -> SavedMethod:
        return SavedMethod("pm_1", "visa 4242")

    def attach_method(
        self, customer_id: str, payment_method_id: str, *, idempotency_key: str
    ) -> SavedMethod:
        return SavedMethod(payment_method_id, "visa 4242")

    def charge(self, *, idempotency_key: str, **_: object) -> Charge:
        self.keys.append(idempotency_key)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def refund(self, intent_id: str, *, amount_minor: int, idempotency_key: str) -> str:
        return "re_1"

    def event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        raise NotImplementedError


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def desk(sqlite_database: Database) -> tuple[Payments, FakeProvider, Clock]:
    provider = FakeProvider()
    clock = Clock()
    with sqlite_database.session() as session:
        accounts.ensure_org(session, "acme")
    payments = Payments(sqlite_database, provider, clock=clock)  # type: ignore[arg-type]
    payments.save_method("acme", payment_method="pm_1")
    return payments, provider, clock


def test_an_attempt_whose_process_died_is_resumed_under_the_same_key(
    desk: tuple[Payments, FakeProvider, Clock],
) -> None:
    payments, provider, clock = desk
    provider.outcomes = [ConnectionError("reset"), Charge(ChargeStatus.SUCCEEDED, "pi_1")]
    with pytest.raises(ConnectionError):
        payments.top_up("acme", "10.00", "USD")
    [stuck] = payments.payments(org="acme")
    assert (stuck["status"], stuck["attempts"]) == ("processing", 1)
    # Not yet stale: nothing is sent again, and a new attempt is not started beside it.
    clock.now += timedelta(minutes=5)
    assert payments.run_dunning()["retried"] == []
    assert payments.retry(stuck["id"])["status"] == "processing"

    clock.now += timedelta(minutes=6)
    [resumed] = payments.run_dunning()["retried"]

    assert (resumed["status"], resumed["attempts"]) == ("succeeded", 1)
    assert provider.keys == [f"{stuck['id']}-1", f"{stuck['id']}-1"]


def test_news_of_an_earlier_attempt_does_not_undo_the_current_one(
    desk: tuple[Payments, FakeProvider, Clock],
) -> None:
    payments, provider, _ = desk
    provider.outcomes = [Charge(ChargeStatus.FAILED, "pi_1", "declined")]
    failed = payments.top_up("acme", "10.00", "USD")
    provider.outcomes = [Charge(ChargeStatus.PROCESSING, "pi_2")]
    assert payments.retry(failed["id"])["status"] == "processing"

    late_failure = ProviderEvent(
        "evt_1", "payment_intent.payment_failed", "pi_1", failed["id"], ChargeStatus.FAILED
    )
    assert payments.apply_event(late_failure) == "stale"
    assert payments.payment(failed["id"])["status"] == "processing"
    # ...but money taken by any intent is always recorded.
    success = ProviderEvent(
        "evt_2", "payment_intent.succeeded", "pi_1", failed["id"], ChargeStatus.SUCCEEDED
    )
    assert payments.apply_event(success) == "applied"
    assert payments.payment(failed["id"])["status"] == "succeeded"


def test_events_for_unknown_payments_or_types_are_recorded_and_ignored(
    desk: tuple[Payments, FakeProvider, Clock],
) -> None:
    payments, _, _ = desk
    unknown = ProviderEvent("evt_9", "customer.created", None, None, None)
    orphan = ProviderEvent(
        "evt_8", "payment_intent.succeeded", "pi_9", "pay_nope", ChargeStatus.SUCCEEDED
    )
    assert payments.apply_event(unknown) == "ignored"
    assert payments.apply_event(orphan) == "ignored"
    assert payments.apply_event(orphan) == "duplicate"


def test_the_dunning_schedule_counts_from_the_first_failure() -> None:
    schedule = DunningSchedule.parse("1,3,7", grace_days=10)
    assert [schedule.next_attempt(START, n) for n in (1, 2, 3, 4)] == [
        START + timedelta(days=1),
        START + timedelta(days=3),
        START + timedelta(days=7),
        None,
    ]
    assert schedule.blocks_at(START) == START + timedelta(days=10)
    assert DunningSchedule.parse("0.5", grace_days=0).retries == (timedelta(hours=12),)


@pytest.mark.parametrize("days", ["3,1", "0,1", "1,x", "-1"])
def test_a_bad_schedule_is_refused(days: str) -> None:
    with pytest.raises(InvalidRequest, match="retry days"):
        DunningSchedule.parse(days, grace_days=1)
