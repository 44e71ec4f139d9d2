"""Hourly rollups of usage: the sums billing and analytics read instead of raw rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from modelmint.metering.events import UsageEvent

__all__ = ["METRICS", "rollup_rows"]

# What one usage event adds to its hour. "requests" counts answered requests (2xx) and
# "errors" the others, so error rates come from the rollups too.
# Engine time is summed in whole microseconds, so the sums stay exact integers.
METRICS = ("requests", "errors", "input_tokens", "output_tokens", "latency_ms", "engine_us")

_KEY = tuple[datetime, str, str, str, str]


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


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
