"""What one batch of usage events adds to the analytics rollups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from modelmint.metering import UsageEvent
from modelmint.metering.rollups import daily, daily_totals, economics_rows, latency_rows

D = Decimal
T = datetime(2026, 11, 5, 10, 15, tzinfo=UTC)


def event(n: int, **fields: object) -> UsageEvent:
    values: dict[str, object] = {
        "id": f"r{n}", "created_at": T, "organization_id": "o", "api_key_id": "k", "model": "m",
        "endpoint": "chat.completions", "status_code": 200, "input_tokens": 10,
        "output_tokens": 5, "latency_ms": 40, "engine_ms": 1.2345, "plan_code": "p",
        "currency": "USD", "cost": D("0.000001"),
    }  # fmt: skip
    values.update(fields)
    return UsageEvent(**values)  # type: ignore[arg-type]


def test_events_are_summed_exactly_per_hour_and_key() -> None:
    events = [
        event(1),
        event(2, status_code=502, input_tokens=0, output_tokens=0, cost=None, latency_ms=3),
        event(3, endpoint="embeddings", input_tokens=7, output_tokens=0),
        event(4, created_at=T + timedelta(hours=1)),
        event(5, plan_code=None, currency=None),
    ]
    rows = economics_rows(events, {"r1": D("0.0000000001"), "r3": D("0.2")})
    hour = T.replace(minute=0)
    billed = rows[(hour, "o", "m", "", "", "p", "USD")]
    assert (billed.requests, billed.errors) == (2, 1)
    assert (billed.input_tokens, billed.output_tokens, billed.embedding_tokens) == (10, 5, 7)
    assert billed.engine_us == 3 * 1234  # 1234.5 us each: whole microseconds, half to even
    assert billed.latency_ms == 83
    assert billed.revenue == D("0.2000000001") and billed.cost == D("0.000002")
    assert rows[(hour, "o", "m", "", "", "", "")].revenue == 0
    days = daily(rows)
    assert days[(T.replace(hour=0, minute=0), "o", "m", "", "", "p", "USD")].requests == 3
    totals = daily_totals(days)
    assert totals[(T.replace(hour=0, minute=0), "USD")].requests == 3
    assert totals[(T.replace(hour=0, minute=0), "")].requests == 1


def test_hours_are_utc_hours_and_only_answers_are_timed() -> None:
    local = T.astimezone(timezone(timedelta(hours=5, minutes=30)))
    rows = economics_rows([event(1, created_at=local)], {})
    assert next(iter(rows))[0] == T.replace(minute=0)
    latencies = latency_rows([event(1), event(2, status_code=429, latency_ms=1)])
    assert latencies == {(T.replace(minute=0), "m", 50): 1}
