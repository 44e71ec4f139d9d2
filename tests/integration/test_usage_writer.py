"""UsageWriter: group commit of usage events into a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from modelmint.errors import ServiceUnavailable
from modelmint.metering import UsageEvent, UsageWriter
from modelmint.storage import Database
from modelmint.storage.tables import UsageRecord
from modelmint.storage.write_turn import WriteTurn

# A guard against hanging forever if a future is never completed; never reached when
# the writer works.
GUARD_S = 10

CREATED = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def event(request_id: str, **fields: Any) -> UsageEvent:
    values: dict[str, Any] = {
        "id": request_id,
        "created_at": CREATED,
        "organization_id": "org_1",
        "api_key_id": "key_1",
        "model": "smollm2-135m-instruct",
        "endpoint": "chat",
        "status_code": 200,
        "input_tokens": 12,
        "output_tokens": 34,
        **fields,
    }
    return UsageEvent(**values)


def stored(database: Database) -> dict[str, UsageRecord]:
    with database.session() as session:
        return {row.id: row for row in session.scalars(select(UsageRecord))}


def session_rows(database: Database, sql: str) -> list[tuple[Any, ...]]:
    with database.session() as session:
        return [tuple(row) for row in session.execute(text(sql))]


@pytest.fixture
def writer(database: Database) -> Iterator[UsageWriter]:
    writer = UsageWriter(database)
    yield writer
    writer.close()


async def test_concurrent_records_are_all_committed_before_they_return(
    database: Database, writer: UsageWriter
) -> None:
    writer.start()
    ids = [f"req_{i:03d}" for i in range(200)]
    await asyncio.wait_for(
        asyncio.gather(*(writer.record(event(i, output_tokens=n)) for n, i in enumerate(ids))),
        GUARD_S,
    )
    # Read before close(): record() returning means the row is already committed.
    rows = stored(database)
    assert sorted(rows) == ids
    assert [rows[i].output_tokens for i in ids] == list(range(200))
    assert writer.events == 200
    # Group commit: concurrent requests shared transactions.
    assert writer.batches < 200


async def test_every_field_round_trips(database: Database, writer: UsageWriter) -> None:
    writer.start()
    await asyncio.wait_for(
        writer.record(
            event(
                "req_full",
                endpoint="completions",
                status_code=499,
                latency_ms=321,
                deployment_id="dep_1",
                model_version_id="ver_1",
                streamed=True,
                usage_estimated=True,
                finish_reason="length",
                input_tokens=2**40,
                engine_ms=12.625,
                plan_code="pro",
                plan_version=3,
                currency="EUR",
                # More digits than a float holds: the batch's encoding must keep them.
                cost=Decimal("0.000000123456789012345678901"),
            )
        ),
        GUARD_S,
    )
    row = stored(database)["req_full"]
    assert (row.created_at, row.organization_id, row.api_key_id) == (CREATED, "org_1", "key_1")
    assert (row.model, row.endpoint) == ("smollm2-135m-instruct", "completions")
    assert row.status_code == 499
    assert (row.input_tokens, row.output_tokens, row.latency_ms) == (2**40, 34, 321)
    assert (row.deployment_id, row.model_version_id) == ("dep_1", "ver_1")
    assert (row.streamed, row.usage_estimated, row.finish_reason) == (True, True, "length")
    assert (row.engine_ms, row.plan_code, row.plan_version, row.currency) == (
        12.625,
        "pro",
        3,
        "EUR",
    )
    assert row.cost == Decimal("0.000000123456789012345678901")


def test_queued_events_share_transactions_up_to_max_batch(database: Database) -> None:
    writer = UsageWriter(database, max_batch=64)
    # Queued before the writer runs, so its first pass finds all of them waiting.
    futures = [writer.submit(event(f"req_{i:03d}")) for i in range(200)]
    writer.start()
    try:
        concurrent.futures.wait(futures, timeout=GUARD_S)
        assert [f.result(timeout=0) for f in futures] == [None] * 200
    finally:
        writer.close()
    assert (writer.batches, writer.events) == (4, 200)  # 64 + 64 + 64 + 8
    assert len(stored(database)) == 200


def test_on_sqlite_the_writer_waits_its_turn_behind_other_processes_writers(
    sqlite_database: Database,
) -> None:
    """Another process's writer holding the turn (``storage.write_turn``) keeps this one
    waiting, in a queue rather than in SQLite's busy handler; it commits once let go."""
    database_path = sqlite_database.url.database
    assert database_path is not None
    other = WriteTurn(database_path)  # its own open file: to flock, another process
    writer = UsageWriter(sqlite_database)
    writer.start()
    try:
        with other():
            future = writer.submit(event("req_after_turn"))
            with pytest.raises(concurrent.futures.TimeoutError):
                future.result(timeout=0.3)  # a working turn never lets it through
        future.result(timeout=GUARD_S)
    finally:
        writer.close()
        other.close()
    assert list(stored(sqlite_database)) == ["req_after_turn"]


async def test_duplicate_id_is_written_once_without_error(
    database: Database, writer: UsageWriter
) -> None:
    # Twice in one batch ...
    same_batch = [writer.submit(event("req_dup", output_tokens=n)) for n in (1, 2)]
    writer.start()
    for future in same_batch:
        assert future.result(timeout=GUARD_S) is None
    # ... and once more later, as a retry would.
    await asyncio.wait_for(writer.record(event("req_dup", output_tokens=3)), GUARD_S)
    rows = stored(database)
    assert list(rows) == ["req_dup"]
    assert rows["req_dup"].output_tokens == 1  # the first write stands
    # Rolled up once: the retry's bet (every event new) was lost and its sums undone.
    with database.session() as session:
        rolled = dict(
            session.execute(text("SELECT metric, quantity FROM usage_rollups_hourly")).all()
        )
    assert (rolled["requests"], rolled["output_tokens"], rolled["input_tokens"]) == (1, 1, 12)
    hourly = session_rows(database, "SELECT requests, output_tokens FROM analytics_usage_hourly")
    assert hourly == [(1, 1)]


def test_close_drains_pending_events(database: Database) -> None:
    writer = UsageWriter(database)
    futures = [writer.submit(event(f"req_{i}")) for i in range(50)]
    writer.start()
    writer.close()  # returns only once everything queued before it is committed
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(stored(database)) == 50


async def test_record_after_close_is_refused(database: Database) -> None:
    writer = UsageWriter(database)
    writer.start()
    writer.close()
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(writer.record(event("req_late")), GUARD_S)
    assert stored(database) == {}


def test_close_without_start_fails_queued_events(database: Database) -> None:
    writer = UsageWriter(database)
    future = writer.submit(event("req_never"))
    writer.close()
    with pytest.raises(ServiceUnavailable):
        future.result(timeout=0)


async def test_cancelled_waiter_is_still_metered_and_the_writer_survives(
    database: Database, writer: UsageWriter
) -> None:
    # A client that goes away cancels the request task while it waits for the commit.
    waiting = asyncio.create_task(writer.record(event("req_cancelled")))
    await asyncio.sleep(0)  # one loop step: the task has queued its event and now waits
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    writer.start()
    await asyncio.wait_for(writer.record(event("req_next")), GUARD_S)
    assert sorted(stored(database)) == ["req_cancelled", "req_next"]


async def test_bad_event_fails_alone_and_the_rest_of_its_batch_is_written(
    database: Database, writer: UsageWriter
) -> None:
    good = [writer.submit(event(f"req_{i}")) for i in range(3)]
    bad = writer.submit(event("req_bad", organization_id=None))  # NOT NULL column
    writer.start()
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(writer.record(event("req_bad_too", api_key_id=None)), GUARD_S)
    for future in good:
        assert future.result(timeout=GUARD_S) is None
    assert bad.exception(timeout=GUARD_S) is not None
    assert sorted(stored(database)) == ["req_0", "req_1", "req_2"]
    # The writer is still alive.
    await asyncio.wait_for(writer.record(event("req_after")), GUARD_S)
    assert "req_after" in stored(database)


async def test_database_failure_is_service_unavailable(tmp_path: Path) -> None:
    unmigrated = Database(f"sqlite:///{tmp_path / 'empty.db'}")  # no usage_records table
    writer = UsageWriter(unmigrated)
    writer.start()
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await asyncio.wait_for(writer.record(event("req_lost")), GUARD_S)
        assert caught.value.status_code == 503
        assert caught.value.message == "usage could not be recorded; try again"
        assert writer.events == 0
    finally:
        writer.close()
        unmigrated.dispose()


async def test_database_going_away_is_service_unavailable(
    database: Database, writer: UsageWriter
) -> None:
    writer.start()
    await asyncio.wait_for(writer.record(event("req_before")), GUARD_S)
    # The table disappears under the running writer (renamed, so it can be put back whole).
    with database.engine.begin() as connection:
        connection.execute(text("ALTER TABLE usage_records RENAME TO usage_records_away"))
    try:
        with pytest.raises(ServiceUnavailable):
            await asyncio.wait_for(writer.record(event("req_after_drop")), GUARD_S)
    finally:
        with database.engine.begin() as connection:
            connection.execute(text("ALTER TABLE usage_records_away RENAME TO usage_records"))
    assert sorted(stored(database)) == ["req_before"]


async def test_a_lone_request_commits_without_the_writer_thread(
    database: Database, writer: UsageWriter
) -> None:
    # The writer thread is not even started: a lone record commits on its own.
    await asyncio.wait_for(writer.record(event("req_alone"), alone=True), GUARD_S)
    assert sorted(stored(database)) == ["req_alone"]
    assert (writer.batches, writer.events) == (1, 1)


async def test_a_lone_request_still_fails_closed(tmp_path: Path) -> None:
    unmigrated = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    writer = UsageWriter(unmigrated)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            await writer.record(event("req_lost"), alone=True)
        assert caught.value.message == "usage could not be recorded; try again"
    finally:
        writer.close()
        unmigrated.dispose()


async def test_a_lone_request_joins_the_queue_when_others_are_waiting(
    database: Database, writer: UsageWriter
) -> None:
    queued = writer.submit(event("req_queued"))  # waiting for the (not yet started) thread
    lone = asyncio.create_task(writer.record(event("req_second"), alone=True))
    await asyncio.sleep(0)
    assert not lone.done()  # it did not jump the queue
    writer.start()
    await asyncio.wait_for(lone, GUARD_S)
    assert queued.result(GUARD_S) is None
    assert sorted(stored(database)) == ["req_queued", "req_second"]
