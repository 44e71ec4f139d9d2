"""Hourly rollups kept by the usage writer equal a recomputation from the raw rows."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from modelmint.metering import UsageEvent, UsageWriter
from modelmint.storage import Database

START = datetime(2026, 11, 1, tzinfo=UTC)


def random_events(seed: int, count: int) -> list[UsageEvent]:
    rng = random.Random(seed)
    return [
        UsageEvent(
            id=f"req_{seed}_{i}",
            created_at=START + timedelta(seconds=rng.randrange(0, 5 * 3600)),
            organization_id=rng.choice(["org_a", "org_b"]),
            api_key_id=rng.choice(["key_1", "key_2", "key_3"]),
            model=rng.choice(["chat", "embed"]),
            model_version_id=rng.choice(["ver_1", "ver_2", None]),
            endpoint="chat.completions",
            status_code=rng.choice([200, 200, 200, 400, 502]),
            input_tokens=rng.randrange(0, 5000),
            output_tokens=rng.randrange(0, 500),
            latency_ms=rng.randrange(1, 900),
            engine_ms=rng.randrange(0, 5_000_000) / 1000,
        )
        for i in range(count)
    ]


@pytest.fixture
def writer(database: Database) -> Iterator[UsageWriter]:
    writer = UsageWriter(database)
    writer.start()
    yield writer
    writer.close()


def as_utc(value: object) -> datetime:
    """A timestamp as read back by raw SQL: text on SQLite, aware datetime on PostgreSQL."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rollups(database: Database) -> dict[tuple[object, ...], int]:
    with database.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT hour, organization_id, api_key_id, model, model_version_id, metric,"
                " quantity FROM usage_rollups_hourly"
            )
        ).all()
    return {(as_utc(row[0]), *row[1:6]): int(row[6]) for row in rows}


def recomputed(database: Database) -> dict[tuple[object, ...], int]:
    """The same sums, straight from usage_records, by an independent route."""
    out: dict[tuple[object, ...], int] = {}
    with database.engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT created_at, organization_id, api_key_id, model,"
                " COALESCE(model_version_id, ''), status_code, input_tokens, output_tokens,"
                " latency_ms, engine_ms FROM usage_records"
            )
        ).all()
    for created, org, key, model, version, status, tokens_in, tokens_out, latency, engine in rows:
        hour = as_utc(created).replace(minute=0, second=0, microsecond=0)
        base = (hour, org, key, model, version)
        for metric, amount in (
            ("requests" if 200 <= status < 300 else "errors", 1),
            ("input_tokens", tokens_in),
            ("output_tokens", tokens_out),
            ("latency_ms", latency),
            ("engine_us", round(engine * 1000)),
        ):
            if amount:
                out[(*base, metric)] = out.get((*base, metric), 0) + amount
    return out


async def test_rollups_equal_the_raw_rows_under_concurrent_writes(
    database: Database, writer: UsageWriter
) -> None:
    events = random_events(seed=1, count=600)
    await asyncio.gather(*(writer.record(e) for e in events))
    assert writer.batches < len(events)  # group commit happened
    expected = recomputed(database)
    assert len(expected) > 20
    assert rollups(database) == expected


async def test_a_retried_event_is_rolled_up_once(database: Database, writer: UsageWriter) -> None:
    events = random_events(seed=2, count=50)
    await asyncio.gather(*(writer.record(e) for e in events))
    before = rollups(database)
    # The same ids again, in new batches mixed with fresh events.
    fresh = random_events(seed=3, count=10)
    await asyncio.gather(*(writer.record(e) for e in [*events[:25], *fresh, *events[25:]]))
    after = rollups(database)
    assert after != before
    assert after == recomputed(database)
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT COUNT(*) FROM usage_records")).scalar() == 60
        # The analytics tables too: a batch holding a stored event is redone without it.
        for table in (
            "analytics_usage_hourly",
            "analytics_usage_daily",
            "analytics_usage_daily_totals",
        ):
            counted = connection.execute(text(f"SELECT SUM(requests + errors) FROM {table}"))
            assert counted.scalar() == 60, table
