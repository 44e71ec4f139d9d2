"""The gateway when its own infrastructure fails: database, Redis, a full disk.

The shared PostgreSQL and Redis servers are never stopped. Instead the gateway reaches
them through a TCP proxy of this test's own (``CuttableProxy``), which can drop every
open connection and refuse new ones, then let traffic through again: to the gateway
that is the server going away and coming back.

A full disk is a SQLite database whose ``max_page_count`` pragma is set to the pages it
already has: SQLite then fails every write that needs a new page with SQLITE_FULL
("database or disk is full"), the same error a full file system gives, without root,
loop devices or a tmpfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.engine import make_url

from modelmint import accounts, registry
from modelmint.app import create_app
from modelmint.billing import FlatRate, Metric, Money, PrepaidPlan, PriceBook
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.config import Settings
from modelmint.observability.metrics import RATE_LIMIT_FALLBACKS
from modelmint.platform import Platform
from modelmint.storage import Database, migrate
from modelmint.storage.tables import UsageRecord
from tests.support.mock_upstream import MockUpstream

D = Decimal
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
PRICES = PriceBook("USD", {("*", Metric.REQUESTS): FlatRate(D("0.05"))})


class CuttableProxy:
    """A TCP proxy to ``target`` on its own event loop thread; ``cut()`` and ``restore()``."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = True
        self.port = 0

    def __enter__(self) -> CuttableProxy:
        self._thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = int(server.sockets[0].getsockname()[1])
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        """Drop every open connection; new ones are closed as soon as they arrive."""

        def drop() -> None:
            self._open = False
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(drop)

    def restore(self) -> None:
        def reopen() -> None:
            self._open = True

        self._loop.call_soon_threadsafe(reopen)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


async def _until(check: Any, within_s: float = 20.0) -> Any:
    """Poll ``check()`` (an awaitable factory) until it returns something truthy."""
    deadline = time.monotonic() + within_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(settings: Settings, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    platform = Platform.build(settings, database)
    await platform.start()
    app = create_app(settings, platform)
    app.state.platform = platform
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=30
        ) as client:
            yield client
    finally:
        await platform.close()


def seed(database: Database, upstream: MockUpstream, *, paid: bool) -> str:
    """An organisation with a key (returned) and a remote chat model; paid: a wallet."""
    with database.session() as session:
        org = accounts.ensure_org(session, "faults")
        _, secret = accounts.create_key(session, org, name="faults")
        registry.add_remote_model(session, "chat", base_url=upstream.base_url, upstream_model="m")
        if paid:
            store = BillingStore(session)
            plan = PrepaidPlan("payg", 1, PRICES)
            store.plans.publish_plan(plan)
            store.subscriptions.subscribe(
                org.id, plan.ref, Period.containing(datetime.now(UTC)).start
            )
            wallet = store.wallets.open_wallet(org.id, "USD")
            wallet.top_up(Money(D("100"), "USD"), at=datetime.now(UTC))
            store.wallets.save_wallet(wallet)
    return secret


# -- database ------------------------------------------------------------------------------


@pytest.fixture
def postgres_proxy(fresh_postgres_url: str) -> Iterator[tuple[str, CuttableProxy]]:
    url = make_url(fresh_postgres_url)
    with CuttableProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        yield proxied.render_as_string(hide_password=False), proxy


async def test_a_lost_database_fails_paid_requests_closed_and_the_gateway_recovers(
    fresh_postgres_url: str, postgres_proxy: tuple[str, CuttableProxy], tmp_path: Path
) -> None:
    proxied_url, proxy = postgres_proxy
    direct = Database(fresh_postgres_url)
    migrate(direct)
    async with MockUpstream() as upstream:
        secret = seed(direct, upstream, paid=True)
        settings = Settings(
            home=tmp_path, database_url=proxied_url, load_bundled_models=False, log_json=False
        )
        headers = {"Authorization": f"Bearer {secret}"}
        async with running(settings, Database(proxied_url)) as gw:
            assert (await gw.post("/v1/chat/completions", json=CHAT, headers=headers)).is_success
            proxy.cut()
            down = [
                await gw.post("/v1/chat/completions", json=CHAT, headers=headers) for _ in range(3)
            ]
            served_while_down = len(upstream.requests) - 1
            proxy.restore()

            async def answered() -> bool:
                response = await gw.post("/v1/chat/completions", json=CHAT, headers=headers)
                return response.status_code == 200

            await _until(answered)
    assert [r.status_code for r in down] == [503] * 3, [r.text for r in down]
    assert {r.json()["error"]["code"] for r in down} == {"service_unavailable"}
    # Fail closed: no answer left unbilled. The first request after the cut was admitted
    # from the process's credit lease (no database on that path) and reached the model,
    # but its usage could not be committed, so it got 503 and cost nothing; from then on
    # the writer is known to be failing and admission goes to the database first.
    assert served_while_down <= 1
    with direct.session() as session:
        rows = list(session.scalars(select(UsageRecord)))
        store = BillingStore(session)
        left = store.ledger.audit_wallet(
            store.wallets.load_wallet(rows[0].organization_id, "USD").id
        )
    assert {r.status_code for r in rows} == {200}
    assert left == Money(D("100") - len(rows) * D("0.05"), "USD")
    direct.dispose()


# -- redis ---------------------------------------------------------------------------------


async def test_a_lost_redis_falls_back_to_per_process_limits_and_comes_back(
    redis_url: str, sqlite_database: Database, tmp_path: Path
) -> None:
    url = make_url(redis_url.replace("redis://", "redis+x://"))
    with CuttableProxy(url.host or "127.0.0.1", url.port or 6379) as proxy:
        async with MockUpstream() as upstream:
            secret = seed(sqlite_database, upstream, paid=False)
            with sqlite_database.session() as session:
                org = accounts.get_org(session, "faults")
                accounts.set_org_limits(
                    session, org, rpm_limit=1000, tpm_limit=None, max_concurrent=None
                )
            settings = Settings(
                home=tmp_path,
                database_url=sqlite_database.url.render_as_string(hide_password=False),
                redis_url=f"redis://127.0.0.1:{proxy.port}/{url.database or 0}",
                load_bundled_models=False,
                log_json=False,
            )
            headers = {"Authorization": f"Bearer {secret}"}
            async with running(settings, Database(settings.database_url)) as gw:

                async def fallbacks_after_one_request() -> float:
                    before = RATE_LIMIT_FALLBACKS._value.get()
                    response = await gw.post("/v1/chat/completions", json=CHAT, headers=headers)
                    assert response.status_code == 200, response.text
                    return float(RATE_LIMIT_FALLBACKS._value.get() - before)

                assert await fallbacks_after_one_request() == 0
                proxy.cut()
                assert [await fallbacks_after_one_request() for _ in range(3)] == [1, 1, 1]
                proxy.restore()

                async def through_redis_again() -> bool:
                    return await fallbacks_after_one_request() == 0

                await _until(through_redis_again)


# -- disk full (SQLite) --------------------------------------------------------------------


@contextlib.contextmanager
def capped_pages(path: Path, headroom: int) -> Iterator[None]:
    """While open, no new SQLite connection may grow the file by more than ``headroom`` pages.

    Set on every engine, and before the gateway starts: the usage writer holds one
    connection for its whole life."""
    with sqlite3.connect(path) as db:
        pages = int(db.execute("PRAGMA page_count").fetchone()[0]) + headroom

    def cap(dbapi_connection: Any, _: Any) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", cap)
    try:
        yield
    finally:
        event.remove(Engine, "connect", cap)


async def test_a_full_disk_gives_a_clear_503_and_corrupts_nothing(
    sqlite_database: Database, tmp_path: Path
) -> None:
    path = Path(str(sqlite_database.url.database))
    async with MockUpstream() as upstream:
        secret = seed(sqlite_database, upstream, paid=False)
        url = sqlite_database.url.render_as_string(hide_password=False)
        settings = Settings(home=tmp_path, database_url=url, load_bundled_models=False)
        headers = {"Authorization": f"Bearer {secret}"}
        with capped_pages(path, headroom=4):
            async with running(settings, Database(url)) as gw:
                answers = [
                    await gw.post("/v1/chat/completions", json=CHAT, headers=headers)
                    for _ in range(300)
                ]
    statuses = {r.status_code for r in answers}
    assert 503 in statuses, statuses  # the disk did fill up within the run
    assert statuses <= {200, 503}
    refused = [r.json()["error"] for r in answers if r.status_code == 503]
    assert {e["code"] for e in refused} == {"service_unavailable"}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = {row[0] for row in db.execute("SELECT id FROM usage_records")}
    served = {r.headers["x-request-id"] for r in answers if r.status_code == 200}
    assert served <= ids  # every answer that left was recorded
