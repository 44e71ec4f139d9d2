"""The demo month: labelled customers, bounded traffic in the window, churn and growth."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from modelmint.demo.names import DEMO_PREFIX
from modelmint.demo.traffic import customers, schedule, window_start

NOW = datetime(2026, 11, 23, 15, 30, tzinfo=UTC)
MODELS = {"chat": ["chat-model"], "embedding": ["embed-model"]}


def test_customers_are_labelled_demo_and_spread_over_the_demo_plans() -> None:
    demo = customers(20, 30, seed=1)
    assert len({c.name for c in demo}) == 20
    assert all(c.name.startswith(DEMO_PREFIX) for c in demo)
    assert {c.plan for c in demo} == {"free", "starter", "payg", "enterprise"}
    assert any(c.joins_day > 0 for c in demo) and any(c.churn_day is not None for c in demo)
    assert customers(20, 30, seed=1) == demo  # reproducible


def test_the_schedule_fits_the_window_and_the_budget() -> None:
    demo = customers(20, 30, seed=2)
    planned = schedule(demo, days=30, requests=2000, now=NOW, models=MODELS, seed=2)
    start = window_start(NOW, 30)
    assert abs(len(planned) - 2000) < 200
    assert all(start <= r.at < NOW for r in planned)
    assert [r.at for r in planned] == sorted(r.at for r in planned)
    by = {c.name: c for c in demo}
    for request in planned:
        customer = by[request.customer]
        day = (request.at - start) // timedelta(days=1)
        assert day >= customer.joins_day
        assert customer.churn_day is None or day < customer.churn_day
    paths = Counter(r.path for r in planned)
    assert paths["/v1/embeddings"] > paths["/v1/chat/completions"] > 0
    failing = [r for r in planned if r.fails]
    assert failing and all(r.body.get("dimensions") == 7 for r in failing)
    assert all(r.body["max_tokens"] <= 24 for r in planned if "messages" in r.body)


def test_traffic_follows_the_day() -> None:
    planned = schedule(customers(20, 30), days=30, requests=3000, now=NOW, models=MODELS)
    hours = Counter(r.at.hour for r in planned)
    assert hours[15] > 2 * hours[3]  # busiest mid-afternoon, quiet at night


def test_only_the_models_the_server_has_are_used() -> None:
    planned = schedule(customers(5, 10), days=10, requests=200, now=NOW,
                       models={"embedding": ["only-embed"]})  # fmt: skip
    assert {r.body["model"] for r in planned} == {"only-embed"}
