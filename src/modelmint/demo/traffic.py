"""Demo traffic: labelled demo customers and a month of realistic requests, as a plan.

Pure and seeded, so a run is reproducible; ``replay`` sends the plan through
the gateway's HTTP API. The shape of the month:

* customers named ``demo-<name>`` on the demo plans (free, starter, pay as you go,
  enterprise), some joining late (monthly cohorts), a few churning before the end;
* each customer's volume grows (or shrinks) a little every day, dips at weekends and
  follows a day curve peaking mid-afternoon UTC;
* a mix of models (chat and embeddings, whatever the server serves) and request
  sizes (short to long prompts, a few to a few dozen output tokens), and a few
  requests that fail on purpose (an embedding size the model cannot give: a 400 the
  gateway meters).

The total number of requests is fixed (``requests``), so a run stays fast; chat
answers are kept short (the bundled chat model makes ~100 tokens/s here).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from modelmint.analytics.windows import to_day
from modelmint.demo.names import DEMO_PREFIX

__all__ = ["DemoCustomer", "DemoRequest", "customers", "schedule", "window_start"]

_NAMES = (
    "aurora", "basalt", "cobalt", "delta", "ember", "fjord", "granite", "harbor", "iris",
    "juniper", "kestrel", "lumen", "meridian", "nimbus", "onyx", "pioneer", "quartz", "ridge",
    "sierra", "tundra", "umber", "vertex", "willow", "xenon", "yarrow", "zephyr",
)  # fmt: skip
# Plans and how their customers behave: share of customers, requests per day at start.
_PLANS = (
    ("free", 0.2, 2.0),
    ("starter", 0.35, 6.0),
    ("payg", 0.3, 5.0),
    ("enterprise", 0.15, 12.0),
)
_WORDS = (
    "invoice", "model", "latency", "customer", "token", "price", "margin", "forecast", "report",
    "contract", "support", "shipment", "order", "refund", "weather", "recipe", "garden",
    "bicycle", "library", "concert", "journey", "harvest", "market", "planet", "river",
)  # fmt: skip
_SIZES = {"small": (4, 12, 4), "medium": (12, 40, 12), "large": (40, 120, 24)}
_ERROR_SHARE = 0.03


@dataclass(frozen=True, slots=True)
class DemoCustomer:
    """A demo organisation and how it uses the platform over the month."""

    name: str
    plan: str
    joins_day: int  # days after the start of the window
    churn_day: int | None  # last day with traffic + 1; None: stays
    daily_requests: float  # on the day it joins
    growth: float  # daily factor
    chat_share: float  # chat requests among its requests
    size: str  # small, medium or large requests


@dataclass(frozen=True, slots=True)
class DemoRequest:
    """One request to send: when it is dated, by whom, where and with what body."""

    at: datetime
    customer: str
    path: str  # "/v1/chat/completions" or "/v1/embeddings"
    body: dict[str, Any] = field(hash=False)
    fails: bool = False  # sent to fail on purpose


def customers(count: int, days: int, *, seed: int = 7) -> list[DemoCustomer]:
    """``count`` demo customers over a window of ``days`` days (names ``demo-<name>``)."""
    rng = random.Random(seed)
    result = []
    for index in range(count):
        base = _NAMES[index % len(_NAMES)]
        name = f"{DEMO_PREFIX}{base}" if index < len(_NAMES) else f"{DEMO_PREFIX}{base}-{index}"
        plan, _, daily = rng.choices(_PLANS, weights=[p[1] for p in _PLANS])[0]
        late = rng.random() < 0.3
        joins = rng.randrange(1, max(2, days * 2 // 3)) if late and days > 2 else 0
        churns = rng.random() < 0.15 and days - joins > 4
        result.append(
            DemoCustomer(
                name=name,
                plan=plan,
                joins_day=joins,
                churn_day=rng.randrange(joins + 2, days - 1) if churns else None,
                daily_requests=daily * rng.lognormvariate(0, 0.6),
                growth=rng.uniform(0.99, 1.06),
                chat_share=rng.choice((0.1, 0.2, 0.35)),
                size=rng.choice(("small", "small", "medium", "large")),
            )
        )
    return result


def _day_curve(hour: int) -> float:
    # Quiet at night, busiest around 15:00 UTC.
    return 0.25 + math.exp(-(((hour - 15) / 4.5) ** 2))


_HOUR_WEIGHTS = [_day_curve(h) for h in range(24)]


def _weights(customer: DemoCustomer, days: int, start: datetime) -> list[float]:
    weights = []
    for day in range(days):
        active = day >= customer.joins_day and (
            customer.churn_day is None or day < customer.churn_day
        )
        weekend = (start + timedelta(days=day)).weekday() >= 5
        weight = customer.daily_requests * customer.growth ** (day - customer.joins_day)
        weights.append(weight * (0.6 if weekend else 1.0) if active else 0.0)
    return weights


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def _request(
    rng: random.Random, customer: DemoCustomer, at: datetime, models: Mapping[str, Sequence[str]]
) -> DemoRequest:
    low, high, max_tokens = _SIZES[customer.size]
    chat = models.get("chat") and (
        rng.random() < customer.chat_share or not models.get("embedding")
    )
    if chat:
        model = rng.choice(list(models["chat"]))
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": f"In a few words: {_text(rng, low, high)}"}],
            "max_tokens": rng.randint(2, max_tokens),
            "temperature": 0,
        }
        return DemoRequest(at, customer.name, "/v1/chat/completions", body)
    model = rng.choice(list(models["embedding"]))
    body = {"model": model, "input": [_text(rng, low, high) for _ in range(rng.randint(1, 4))]}
    fails = rng.random() < _ERROR_SHARE
    if fails:
        body["dimensions"] = 7  # no model here returns 7 dimensions: a metered 400
    return DemoRequest(at, customer.name, "/v1/embeddings", body, fails)


def schedule(
    demo_customers: Sequence[DemoCustomer],
    *,
    days: int,
    requests: int,
    now: datetime,
    models: Mapping[str, Sequence[str]],
    seed: int = 7,
) -> list[DemoRequest]:
    """About ``requests`` requests spread over the ``days`` days before ``now`` (the window
    starts at midnight UTC ``days`` days ago), in time order; ``models`` lists the public
    names of the "chat" and "embedding" models to use."""
    if not models.get("chat") and not models.get("embedding"):
        raise ValueError("the server serves no chat or embedding model to send traffic to")
    rng = random.Random(seed)
    start = window_start(now, days)
    weights = {c.name: _weights(c, days + 1, start) for c in demo_customers}
    total = sum(sum(w) for w in weights.values()) or 1.0
    planned: list[DemoRequest] = []
    for customer in demo_customers:
        for day, weight in enumerate(weights[customer.name]):
            expected = weight * requests / total
            count = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
            for _ in range(count):
                hour = rng.choices(range(24), weights=_HOUR_WEIGHTS)[0]
                at = start + timedelta(days=day, hours=hour, seconds=rng.randrange(3600))
                if at < now:
                    planned.append(_request(rng, customer, at, models))
    planned.sort(key=lambda r: r.at)
    return planned


def window_start(now: datetime, days: int) -> datetime:
    """Midnight UTC ``days`` days before ``now``: when the demo month begins."""
    return to_day(now) - timedelta(days=days)
