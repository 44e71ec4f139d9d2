"""Hourly rollups of usage: the sums billing and analytics read instead of raw rows.

Two families, both computed here from the events a batch actually inserted (so a
retried event is never summed twice) and stored by ``store.UsageStore`` in the
transaction that stores the rows:

* ``rollup_rows``: per (hour, organisation, key, model, version, metric), the
  integer counters billing and limits read (``usage_rollups_hourly``);
* ``economics_rows`` and ``latency_rows``: what analytics reads. Per (hour,
  organisation, model, version, deployment, plan, currency): requests, errors,
  tokens, engine time, latency, and the exact sums of the request charges
  (revenue) and serving costs; per (hour, model, latency bucket): answered requests,
  so percentiles come from counts. ``daily`` folds hourly rows into UTC days, and
  ``daily_totals`` days into (day, currency).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from modelmint.billing.exact import EXACT
from modelmint.metering.events import UsageEvent

__all__ = [
    "LATENCY_BUCKETS_MS",
    "LATENCY_OVERFLOW_MS",
    "METRICS",
    "EconomicsKey",
    "EconomicsSums",
    "LatencyKey",
    "daily",
    "daily_totals",
    "economics_rows",
    "latency_bucket",
    "latency_rows",
    "rollup_rows",
]

# What one usage event adds to its hour. "requests" counts answered requests (2xx) and
# "errors" the others, so error rates come from the rollups too.
# Engine time is summed in whole microseconds, so the sums stay exact integers.
METRICS = ("requests", "errors", "input_tokens", "output_tokens", "latency_ms", "engine_us")

# Upper bounds (inclusive) of the latency histogram's buckets, in milliseconds: fine
# where embeddings and short chats answer (tens of ms), coarse where long generations
# do. The last bucket holds everything slower than the largest bound.
LATENCY_BUCKETS_MS: tuple[int, ...] = (
    5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 15_000, 30_000, 60_000, 120_000,
)  # fmt: skip
LATENCY_OVERFLOW_MS = 2**31 - 1

_KEY = tuple[datetime, str, str, str, str]
EconomicsKey = tuple[datetime, str, str, str, str, str, str]
"""(hour or day, organisation, model, version, deployment, plan code, currency)."""
LatencyKey = tuple[datetime, str, int]
"""(hour, model, bucket upper bound in ms)."""

_ZERO = Decimal(0)


def _hour(moment: datetime) -> datetime:
    # Hours and days are UTC ones, whatever zone the event was stamped in.
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollup_rows(events: Iterable[UsageEvent]) -> list[dict[str, Any]]:
    """Sum events into one row per (hour, organisation, key, model, version, metric)."""
    sums: Counter[tuple[_KEY, str]] = Counter()
    for event in events:
        key: _KEY = (
            _hour(event.created_at),
            event.organization_id,
            event.api_key_id,
            event.model,
            event.model_version_id or "",
        )
        ok = 200 <= event.status_code < 300
        sums[key, "requests" if ok else "errors"] += 1
        sums[key, "input_tokens"] += event.input_tokens
        sums[key, "output_tokens"] += event.output_tokens
        sums[key, "latency_ms"] += event.latency_ms
        sums[key, "engine_us"] += round(event.engine_ms * 1000)
    return [
        {
            "hour": hour,
            "organization_id": org,
            "api_key_id": key_id,
            "model": model,
            "model_version_id": version,
            "metric": metric,
            "quantity": quantity,
        }
        for ((hour, org, key_id, model, version), metric), quantity in sums.items()
        if quantity
    ]


@dataclass(slots=True)
class EconomicsSums:
    """The additive measures of one analytics rollup row."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    embedding_tokens: int = 0
    engine_us: int = 0
    latency_ms: int = 0
    revenue: Decimal = field(default=_ZERO)
    cost: Decimal = field(default=_ZERO)

    def add(self, other: EconomicsSums) -> None:
        """Add ``other`` into this row (exactly, money included)."""
        self.requests += other.requests
        self.errors += other.errors
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.embedding_tokens += other.embedding_tokens
        self.engine_us += other.engine_us
        self.latency_ms += other.latency_ms
        self.revenue = EXACT.add(self.revenue, other.revenue)
        self.cost = EXACT.add(self.cost, other.cost)


def _measures(event: UsageEvent, charge: Decimal) -> EconomicsSums:
    ok = 200 <= event.status_code < 300
    embedding = event.endpoint == "embeddings"
    return EconomicsSums(
        requests=1 if ok else 0,
        errors=0 if ok else 1,
        input_tokens=0 if embedding else event.input_tokens,
        output_tokens=event.output_tokens,
        embedding_tokens=event.input_tokens if embedding else 0,
        engine_us=round(event.engine_ms * 1000),
        latency_ms=event.latency_ms,
        revenue=charge,
        cost=_ZERO if event.cost is None else event.cost,
    )


def economics_rows(
    events: Iterable[UsageEvent], charges: Mapping[str, Decimal]
) -> dict[EconomicsKey, EconomicsSums]:
    """Sum events into one analytics row per (hour, organisation, model, version,
    deployment, plan, currency); ``charges`` maps event ids to their exact charge
    (absent: nothing charged)."""
    rows: dict[EconomicsKey, EconomicsSums] = {}
    for event in events:
        key: EconomicsKey = (
            _hour(event.created_at),
            event.organization_id,
            event.model,
            event.model_version_id or "",
            event.deployment_id or "",
            event.plan_code or "",
            event.currency or "",
        )
        measures = _measures(event, charges.get(event.id, _ZERO))
        row = rows.get(key)
        if row is None:
            rows[key] = measures
        else:
            row.add(measures)
    return rows


def daily(rows: Mapping[EconomicsKey, EconomicsSums]) -> dict[EconomicsKey, EconomicsSums]:
    """Hourly analytics rows folded into UTC days (the key's first part becomes the day)."""
    days: dict[EconomicsKey, EconomicsSums] = {}
    for (hour, *rest), sums in rows.items():
        key: EconomicsKey = (hour.replace(hour=0), *rest)  # type: ignore[assignment]
        row = days.get(key)
        if row is None:
            row = days[key] = EconomicsSums()
        row.add(sums)
    return days


def daily_totals(
    days: Mapping[EconomicsKey, EconomicsSums],
) -> dict[tuple[datetime, str], EconomicsSums]:
    """Daily analytics rows folded into (day, currency): what the overview reads."""
    totals: dict[tuple[datetime, str], EconomicsSums] = {}
    for key, sums in days.items():
        total = totals.get((key[0], key[6]))
        if total is None:
            total = totals[(key[0], key[6])] = EconomicsSums()
        total.add(sums)
    return totals


def latency_bucket(latency_ms: int) -> int:
    """The upper bound of the histogram bucket that holds ``latency_ms``."""
    index = bisect_left(LATENCY_BUCKETS_MS, latency_ms)
    return LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else LATENCY_OVERFLOW_MS


def latency_rows(events: Iterable[UsageEvent]) -> Counter[LatencyKey]:
    """Answered requests per (hour, model, latency bucket); failures are left out, since a
    refusal's speed says nothing about how fast the model answers."""
    counts: Counter[LatencyKey] = Counter()
    for event in events:
        if 200 <= event.status_code < 300:
            counts[_hour(event.created_at), event.model, latency_bucket(event.latency_ms)] += 1
    return counts
