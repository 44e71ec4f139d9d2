"""`modelmint demo traffic` against a real `modelmint up`: customers, keys and metered traffic.

The demo goes through the gateway's HTTP API only; what it did is then read back from
the server's database and from `modelmint report`, and must agree with what the
command says it sent.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from sqlalchemy import create_engine, text

from modelmint.config import Settings
from modelmint.demo.traffic import customers, window_start
from tests.support.processes import Server, cli

pytestmark = pytest.mark.slow

DAYS, ORGS, REQUESTS, SEED = 6, 4, 40, 3


@dataclass
class DemoRun:
    server: Server
    output: str
    statuses: Counter[int]
    started: datetime
    rows: list[dict[str, Any]]  # usage rows of the demo customers, with their org's name

    @property
    def backdated(self) -> bool:
        return "Dated from" in self.output


def query(server: Server, sql: str) -> list[dict[str, Any]]:
    engine = create_engine(f"sqlite:///{server.home / 'modelmint.db'}")
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(text(sql)).mappings()]
    finally:
        engine.dispose()


def names() -> list[str]:
    return [c.name for c in customers(ORGS, DAYS, seed=SEED)]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    server = Server(
        home=tmp_path_factory.mktemp("demo-traffic"),
        extra_env={"MODELMINT_DEMO_TIME_TRAVEL": "true"},
    )
    server.start()
    try:
        started = datetime.now(UTC)
        result = cli(
            server.env, "demo", "traffic", "--days", str(DAYS), "--orgs", str(ORGS),
            "--requests", str(REQUESTS), "--base-url", server.url, "--seed", str(SEED),
        )  # fmt: skip
        sent = re.search(
            r"Sent (\d+) requests for \d+ demo organisations \(([^)]*)\)", result.stdout
        )
        assert sent is not None, result.stdout
        statuses = Counter({int(code): int(n) for code, n in re.findall(r"(\d+): (\d+)", sent[2])})
        assert sum(statuses.values()) == int(sent[1])
        quoted = ", ".join(f"'{name}'" for name in names())
        rows = query(
            server,
            "SELECT u.*, o.name AS org_name FROM usage_records u JOIN organizations o"
            f" ON o.id = u.organization_id WHERE o.name IN ({quoted})",
        )
        yield DemoRun(server, result.stdout, statuses, started, rows)
    finally:
        server.stop()


def test_demo_customers_are_created_on_the_demo_plans_with_keys(run: DemoRun) -> None:
    plans = {
        row["name"]: row["code"]
        for row in query(
            run.server,
            "SELECT o.name, p.code FROM billing_subscriptions s"
            " JOIN organizations o ON o.id = s.organization_id"
            " JOIN billing_plan_versions p ON p.id = s.plan_version_id",
        )
    }
    keys = {
        row["name"]
        for row in query(
            run.server,
            "SELECT o.name FROM api_keys k JOIN organizations o ON o.id = k.organization_id"
            " WHERE k.name = 'demo-traffic'",
        )
    }
    for customer in customers(ORGS, DAYS, seed=SEED):
        assert customer.name.startswith("demo-")
        assert plans[customer.name] == customer.plan
        assert customer.name in keys


def test_every_answered_request_is_metered_and_reported(run: DemoRun) -> None:
    # Answered requests and the metered 400s (an impossible embedding size) are usage;
    # refusals at admission (a free tier's cap: 402) never reach a model.
    metered = run.statuses[200] + run.statuses[400]
    assert run.statuses[200] > REQUESTS // 2
    assert len(run.rows) == metered
    assert Counter(row["status_code"] for row in run.rows) == Counter(
        {s: n for s, n in run.statuses.items() if s in (200, 400)}
    )
    month = run.rows[0]["created_at"][:7]
    report = orjson.loads(
        cli(run.server.env, "report", "usage", "--by", "org", "--period", month,
            "--format", "json").stdout
    )  # fmt: skip
    reported = {row["name"]: row["requests"] for row in report["rows"]}
    answered = Counter(
        row["org_name"]
        for row in run.rows
        if row["status_code"] == 200 and row["created_at"][:7] == month
    )
    for name, count in answered.items():
        assert reported[name] == count


def test_traffic_is_dated_over_the_window_when_the_server_allows_it(run: DemoRun) -> None:
    # The server runs with MODELMINT_DEMO_TIME_TRAVEL=true: whatever the first planned
    # requests get (a 402, a 400), the replay must find out that it may date them.
    assert run.backdated, run.output
    moments = [datetime.fromisoformat(row["created_at"]).replace(tzinfo=UTC) for row in run.rows]
    start = window_start(run.started, DAYS)
    assert all(start <= moment <= run.started + timedelta(minutes=5) for moment in moments)
    assert len({moment.date() for moment in moments}) >= 3
    assert min(moments) < run.started - timedelta(days=2)


def test_the_bundled_models_cost_the_local_hourly_rate_so_margins_are_real(run: DemoRun) -> None:
    # The server ran with the default MODELMINT_LOCAL_COST_PER_HOUR: every request a model
    # spent engine time on carries a serving cost, and no model shows a free 100 % margin.
    default = Settings.model_fields["local_cost_per_hour"].default
    assert default > 0
    rates = query(run.server, "SELECT public_name, cost_per_hour FROM deployments")
    assert {row["public_name"]: Decimal(row["cost_per_hour"]) for row in rates} == {
        "smollm2-135m-instruct": default,
        "all-minilm-l6-v2": default,
    }
    engine_rows = [row for row in run.rows if row["engine_ms"] > 0]
    assert engine_rows
    assert all(Decimal(row["cost"]) > 0 for row in engine_rows)
    month = max(row["created_at"] for row in engine_rows)[:7]
    report = orjson.loads(
        cli(run.server.env, "report", "margins", "--by", "model", "--period", month,
            "--format", "json").stdout
    )  # fmt: skip
    reported = {row["name"]: row for row in report["rows"]}
    measured: dict[str, Decimal] = {}
    for row in query(
        run.server, f"SELECT model, cost FROM usage_records WHERE created_at LIKE '{month}%'"
    ):
        measured[row["model"]] = measured.get(row["model"], Decimal(0)) + Decimal(row["cost"] or 0)
    assert any(cost > 0 for cost in measured.values())
    for model, cost in measured.items():
        shown = reported[model]
        assert Decimal(shown["cost"]) == cost
        assert Decimal(shown["margin"]) == Decimal(shown["revenue"]) - cost
        if cost > 0 and shown["margin_pct"] is not None:
            assert Decimal(str(shown["margin_pct"])) < 100
    assert Decimal(report["total"]["cost"]) == sum(measured.values())
