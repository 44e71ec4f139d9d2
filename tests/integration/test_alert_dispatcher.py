"""Billing alerts POSTed to a real webhook receiver (aiohttp on 127.0.0.1), on SQLite and
PostgreSQL. A fake clock moves time; each test drives ``run_once()`` itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web
from sqlalchemy import select

from modelmint.accounts import create_org
from modelmint.billing_admin import AlertDispatcher
from modelmint.storage import Database
from modelmint.storage.tables import BillingAlert

T0 = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True, slots=True)
class Received:
    headers: dict[str, str]  # names lower-cased
    body: Any


class Receiver:
    """A webhook endpoint that records every request; it can fail or stall on demand."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.failures_left = 0
        self.fail_status = 500
        # Hold each request this long before answering (until close() at the latest).
        self.delay_s = 0.0
        self._closing = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/billing"

    def fail_next(self, n: int, status: int = 500) -> None:
        self.failures_left, self.fail_status = n, status

    def ids(self) -> list[str]:
        return [r.headers["x-modelmint-alert-id"] for r in self.requests]

    async def wait_for_requests(self, n: int) -> None:
        async with asyncio.timeout(5.0), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= n)

    async def _hook(self, request: web.Request) -> web.Response:
        received = Received(
            {k.lower(): v for k, v in request.headers.items()}, orjson.loads(await request.read())
        )
        async with self._arrived:
            self.requests.append(received)
            self._arrived.notify_all()
        if self.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.delay_s)
        if self.failures_left:
            self.failures_left -= 1
            return web.Response(status=self.fail_status, text="receiver failure")
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/billing", self._hook)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))  # port 0: a free one, read back below
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


Dispatchers = Callable[..., AlertDispatcher]


@pytest.fixture
async def dispatchers(database: Database, clock: FakeClock) -> AsyncIterator[Dispatchers]:
    """Makes dispatchers on the test's database and fake clock; closes them afterwards."""
    made: list[AlertDispatcher] = []

    def make(*, on: Database | None = None, **options: Any) -> AlertDispatcher:
        dispatcher = AlertDispatcher(on or database, clock=clock, **options)
        made.append(dispatcher)
        return dispatcher

    yield make
    for dispatcher in made:
        await dispatcher.close()


def add_org(database: Database, name: str, url: str | None) -> str:
    with database.session() as session:
        org = create_org(session, name)
        org.alert_webhook_url = url
        return org.id


def add_alert(database: Database, org_id: str, alert_id: str, threshold: int = 80) -> None:
    """An alert as the metering writer raises it: pending, never tried, due at once."""
    with database.session() as session:
        session.add(
            BillingAlert(
                id=alert_id,
                organization_id=org_id,
                api_key_id="",
                kind="budget",
                subject="",
                period_start=datetime(2026, 11, 1, tzinfo=UTC),
                threshold=threshold,
                payload=payload_of(alert_id, threshold),
                status="pending",
                attempts=0,
                next_attempt_at=T0,
                created_at=T0,
            )
        )


def payload_of(alert_id: str, threshold: int = 80) -> dict[str, Any]:
    return {
        "id": alert_id,
        "type": "budget.threshold",
        "threshold": threshold,
        "amount": "80.00",
        "currency": "EUR",
    }


def alert(database: Database, alert_id: str) -> BillingAlert:
    with database.session() as session:
        row = session.get(BillingAlert, alert_id)
        assert row is not None
        return row


@contextlib.contextmanager
def no_secret_logged(caplog: pytest.LogCaptureFixture, secret: str) -> Iterator[None]:
    with caplog.at_level(logging.DEBUG, logger="modelmint"):
        yield
    assert all(secret not in record.getMessage() for record in caplog.records)


# -- delivery -------------------------------------------------------------------------------


async def test_delivers_the_payload_as_json_with_the_alert_id_header(
    database: Database, receiver: Receiver, dispatchers: Dispatchers, clock: FakeClock
) -> None:
    org = add_org(database, "acme", receiver.url)
    add_alert(database, org, "alert_budget_80")
    dispatcher = dispatchers()

    assert await dispatcher.run_once() == 1

    [request] = receiver.requests
    assert request.body == payload_of("alert_budget_80")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "ModelMint-Alerts"
    assert request.headers["x-modelmint-alert-id"] == "alert_budget_80"
    row = alert(database, "alert_budget_80")
    assert (row.status, row.attempts, row.delivered_at, row.last_error) == (
        "delivered",
        1,
        clock.now,
        None,
    )
    clock.advance(3600)
    assert await dispatcher.run_once() == 0
    assert len(receiver.requests) == 1


async def test_a_failed_attempt_is_retried_with_exponential_backoff(
    database: Database, receiver: Receiver, dispatchers: Dispatchers, clock: FakeClock
) -> None:
    org = add_org(database, "acme", receiver.url)
    add_alert(database, org, "alert_1")
    receiver.fail_next(2, status=500)
    dispatcher = dispatchers(base_delay_s=10.0)

    assert await dispatcher.run_once() == 1
    row = alert(database, "alert_1")
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "HTTP 500")
    assert row.next_attempt_at == T0 + timedelta(seconds=10)

    clock.advance(9.999)
    assert await dispatcher.run_once() == 0  # not due yet
    clock.advance(0.001)
    assert await dispatcher.run_once() == 1
    row = alert(database, "alert_1")
    assert (row.status, row.attempts) == ("pending", 2)
    assert row.next_attempt_at == clock.now + timedelta(seconds=20)  # doubled

    clock.advance(19)
    assert await dispatcher.run_once() == 0
    clock.advance(1)
    assert await dispatcher.run_once() == 1
    row = alert(database, "alert_1")
    assert (row.status, row.attempts, row.delivered_at) == ("delivered", 3, clock.now)
    assert receiver.ids() == ["alert_1"] * 3


async def test_gives_up_after_max_attempts_with_the_delay_capped_at_an_hour(
    database: Database, receiver: Receiver, dispatchers: Dispatchers, clock: FakeClock
) -> None:
    org = add_org(database, "acme", receiver.url)
    add_alert(database, org, "alert_1")
    receiver.fail_next(100, status=503)
    dispatcher = dispatchers(max_attempts=3, base_delay_s=3000.0)

    assert await dispatcher.run_once() == 1
    assert alert(database, "alert_1").next_attempt_at == clock.now + timedelta(seconds=3000)
    clock.advance(3000)
    assert await dispatcher.run_once() == 1
    # 6000 s by the doubling, capped at an hour.
    assert alert(database, "alert_1").next_attempt_at == clock.now + timedelta(seconds=3600)
    clock.advance(3600)
    assert await dispatcher.run_once() == 1

    row = alert(database, "alert_1")
    assert (row.status, row.attempts, row.last_error, row.delivered_at) == (
        "failed",
        3,
        "HTTP 503",
        None,
    )
    clock.advance(86400)
    assert await dispatcher.run_once() == 0
    assert len(receiver.requests) == 3


async def test_410_gone_fails_the_alert_at_once(
    database: Database, receiver: Receiver, dispatchers: Dispatchers
) -> None:
    org = add_org(database, "acme", receiver.url)
    add_alert(database, org, "alert_1")
    receiver.fail_next(1, status=410)

    assert await dispatchers().run_once() == 1

    row = alert(database, "alert_1")
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, "HTTP 410")


async def test_an_organisation_without_a_webhook_leaves_its_alerts_unrouted(
    database: Database, receiver: Receiver, dispatchers: Dispatchers, clock: FakeClock
) -> None:
    org = add_org(database, "quiet", None)
    add_alert(database, org, "alert_1")
    dispatcher = dispatchers()

    assert await dispatcher.run_once() == 0

    row = alert(database, "alert_1")
    assert (row.status, row.attempts, row.delivered_at) == ("unrouted", 0, None)
    assert row.payload == payload_of("alert_1")  # still recorded, for the admin API
    clock.advance(86400)
    assert await dispatcher.run_once() == 0
    assert receiver.requests == []


async def test_a_timeout_is_a_failed_attempt(
    database: Database, receiver: Receiver, dispatchers: Dispatchers, clock: FakeClock
) -> None:
    org = add_org(database, "acme", receiver.url)
    add_alert(database, org, "alert_1")
    receiver.delay_s = 10.0  # far beyond the dispatcher's patience
    dispatcher = dispatchers(timeout_s=0.2, base_delay_s=5.0)

    assert await dispatcher.run_once() == 1

    row = alert(database, "alert_1")
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error is not None and "Timeout" in row.last_error
    assert row.next_attempt_at == clock.now + timedelta(seconds=5)
    receiver.delay_s = 0.0
    clock.advance(5)
    assert await dispatcher.run_once() == 1
    assert alert(database, "alert_1").status == "delivered"


async def test_a_connection_error_is_a_failed_attempt_that_never_reveals_the_url(
    database: Database,
    dispatchers: Dispatchers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret = "tok_s3cr3t_in_the_query"
    org = add_org(database, "acme", f"http://127.0.0.1:{port}/hook?token={secret}")
    add_alert(database, org, "alert_1")

    with no_secret_logged(caplog, secret):
        assert await dispatchers().run_once() == 1

    row = alert(database, "alert_1")
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error is not None and row.last_error.startswith("ClientConnectorError")
    assert secret not in row.last_error
    assert any(r.levelno == logging.WARNING and "alert_1" in r.getMessage() for r in caplog.records)


async def test_an_invalid_url_is_a_failed_attempt_without_the_url(
    database: Database, dispatchers: Dispatchers
) -> None:
    org = add_org(database, "acme", "http://[broken/hook?token=s3cret")
    add_alert(database, org, "alert_1")

    assert await dispatchers().run_once() == 1

    row = alert(database, "alert_1")
    assert (row.status, row.attempts) == ("pending", 1)
    assert row.last_error is not None and "s3cret" not in row.last_error


# -- several processes --------------------------------------------------------------------


@pytest.fixture
def second_database(database: Database) -> Iterator[Database]:
    """Another engine on the same database: what a second gateway process would have."""
    other = Database(database.url.render_as_string(hide_password=False))
    yield other
    other.dispose()


async def test_two_dispatchers_racing_deliver_each_alert_exactly_once(
    database: Database,
    second_database: Database,
    receiver: Receiver,
    dispatchers: Dispatchers,
    clock: FakeClock,
) -> None:
    orgs = [add_org(database, name, receiver.url) for name in ("acme", "globex")]
    ids = [f"alert_{n:02d}" for n in range(30)]
    for n, alert_id in enumerate(ids):
        add_alert(database, orgs[n % 2], alert_id)
    receiver.delay_s = 0.01  # keeps deliveries in flight while the other one claims
    first, second = dispatchers(), dispatchers(on=second_database)

    counts = await asyncio.gather(first.run_once(), second.run_once())

    assert sum(counts) == len(ids)
    assert sorted(receiver.ids()) == ids
    clock.advance(86400)  # every claim long expired: still nothing is sent again
    assert await asyncio.gather(first.run_once(), second.run_once()) == [0, 0]
    with database.session() as session:
        statuses = session.scalars(select(BillingAlert.status)).all()
    assert set(statuses) == {"delivered"}


async def test_an_alert_claimed_by_another_process_is_left_alone_until_the_claim_ends(
    database: Database, receiver: Receiver, dispatchers: Dispatchers, clock: FakeClock
) -> None:
    org = add_org(database, "acme", receiver.url)
    add_alert(database, org, "alert_1")
    with database.session() as session:  # claimed by a process that then died
        row = session.get(BillingAlert, "alert_1")
        assert row is not None
        row.next_attempt_at = clock.now + timedelta(seconds=30)
    dispatcher = dispatchers(claim_s=30.0)

    assert await dispatcher.run_once() == 0
    clock.advance(30)
    assert await dispatcher.run_once() == 1
    assert receiver.ids() == ["alert_1"]


# -- background loop --------------------------------------------------------------------


async def test_the_loop_makes_a_pass_when_nudged_from_another_thread(
    database: Database, receiver: Receiver, clock: FakeClock
) -> None:
    org = add_org(database, "acme", receiver.url)
    add_alert(database, org, "alert_1")  # due at T0
    clock.advance(-60)
    first_pass = asyncio.Event()

    def watched_clock() -> datetime:
        first_pass.set()  # read at the start of each pass, on the event loop
        return clock()

    # Polls so rarely that only the nudge can start the second pass in time.
    dispatcher = AlertDispatcher(database, poll_s=3600.0, clock=watched_clock)
    await dispatcher.start()
    try:
        async with asyncio.timeout(5.0):
            await first_pass.wait()  # that pass found nothing due
        clock.advance(60)
        nudger = threading.Thread(target=dispatcher.nudge)
        nudger.start()
        nudger.join()
        await receiver.wait_for_requests(1)
    finally:
        await dispatcher.close()  # lets the delivery in flight be recorded
    assert receiver.ids() == ["alert_1"]
    assert alert(database, "alert_1").status == "delivered"
