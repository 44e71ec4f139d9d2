"""The "Compare versions" page over a real SQLite database: versions registered in the
registry, usage written and charged by the metering store, ratings recorded as customers
give them; the page must show what ``compare_versions`` returns, and refuse mistakes with
a message instead of a 500."""

from __future__ import annotations

import html
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient

from modelmint import accounts
from modelmint.billing import FlatRate, Metric, Money, PriceBook, SubscriptionPlan
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.charging.settlement import Charger
from modelmint.clock import utcnow
from modelmint.feedback.compare import Comparison, compare_versions
from modelmint.feedback.feedback import FeedbackGiven, record_feedback
from modelmint.metering import UsageEvent
from modelmint.metering.store import UsageStore
from modelmint.registry.versions import TrainedVersion, register_trained
from modelmint.storage import Database
from tests.unit.dashboard.conftest import Dashboard, build_app

MODEL = "iris"
PLAN = "compare-pro"
# Per version: offline accuracy, share of answers rated up, failed requests, mean latency.
VERSIONS = {1: (0.81, 0.3, 1, 40), 2: (0.88, 0.6, 4, 55), 3: (0.93, 0.9, 0, 35)}
REQUESTS_PER_VERSION = 30
_ROW = re.compile(r'<tr id="row-([^"]+)"><td>([^<]*)</td>(.*?)</tr>', re.S)
_CELL = re.compile(r'<td class="num"(?: title="([^"]*)")?>([^<]*)</td>')


def _plan() -> SubscriptionPlan:
    book = PriceBook(
        "USD",
        {
            (MODEL, Metric.INPUT_TOKENS): FlatRate(Decimal("1"), 1000),
            (MODEL, Metric.OUTPUT_TOKENS): FlatRate(Decimal("3"), 1000),
        },
    )
    return SubscriptionPlan(PLAN, 1, fee=Money(Decimal("0.00"), "USD"), price_book=book)


def _events(org: str, version_ids: dict[int, str], rng: random.Random) -> list[UsageEvent]:
    events = []
    for number, (_, _, failures, latency) in VERSIONS.items():
        for n in range(REQUESTS_PER_VERSION):
            ok = n >= failures
            tokens_in, tokens_out = rng.randrange(20, 400), rng.randrange(5, 120)
            events.append(
                UsageEvent(
                    id=f"req_v{number}_{n}", created_at=utcnow(), organization_id=org,
                    api_key_id="key_compare", model=MODEL, endpoint="classifications",
                    status_code=200 if ok else 500,
                    input_tokens=tokens_in if ok else 0, output_tokens=tokens_out if ok else 0,
                    latency_ms=latency + rng.randrange(-10, 10),
                    model_version_id=version_ids[number],
                    plan_code=PLAN, plan_version=1, currency="USD",
                    cost=Decimal(tokens_in) * Decimal("0.0004") if ok else None,
                )
            )  # fmt: skip
    return events


def _register(database: Database) -> dict[int, str]:
    ids = {}
    with database.session() as session:
        for number, (accuracy, *_) in VERSIONS.items():
            trained = TrainedVersion(
                name=MODEL, task="classification", recipe="tabular-classifier", format="onnx",
                artifact_uri=f"file:///models/{MODEL}/{number}", params={"epochs": number},
                metrics={"accuracy": accuracy, "f1_macro": accuracy - 0.02}, data_hash="d",
                lineage={},
            )  # fmt: skip
            ids[number] = register_trained(session, trained).id
    return ids


def _rate(database: Database, org: str, events: list[UsageEvent], rng: random.Random) -> None:
    by_version = {number: share for number, (_, share, _, _) in VERSIONS.items()}
    with database.session() as session:
        for event in events:
            number = int(event.id.split("_")[1][1:])
            if event.status_code == 200:
                up = rng.random() < by_version[number]
                given = FeedbackGiven(request_id=event.id, score=up)
                record_feedback(session, org, event.api_key_id, given)


@pytest.fixture(scope="module")
def seeded(shared_database: Database) -> Database:
    """Three versions of ``iris`` with charged usage and thumbs ratings, and a model with
    a single version."""
    rng = random.Random(5)
    version_ids = _register(shared_database)
    with shared_database.session() as session:
        org = accounts.create_org(session, "compare-org").id
        repo = BillingStore(session)
        repo.plans.publish_plan(_plan())
        repo.subscriptions.subscribe(
            org, repo.plans.load_plan(PLAN, 1).ref, Period.containing(datetime.now(UTC)).start
        )
        lonely = TrainedVersion(
            name="lonely", task="classification", recipe="r", format="onnx",
            artifact_uri="file:///lonely", params={}, metrics={}, data_hash="d", lineage={},
        )  # fmt: skip
        register_trained(session, lonely)
    events = _events(org, version_ids, rng)
    store = UsageStore(shared_database, Charger())
    try:
        assert store.write(events) == len(events)
    finally:
        store.close()
    _rate(shared_database, org, events, rng)
    return shared_database


@pytest.fixture
def admin(seeded: Database) -> Iterator[Dashboard]:
    app = build_app(seeded)
    with TestClient(app) as client:
        dashboard = Dashboard(app, client)
        dashboard.login()
        yield dashboard


def _table(page: str) -> dict[str, list[tuple[str, str]]]:
    """Row key -> the (shown, exact) pairs of its cells, one per version."""
    return {
        key: [
            (html.unescape(shown), html.unescape(exact or ""))
            for exact, shown in _CELL.findall(cells)
        ]
        for key, _, cells in _ROW.findall(page)
    }


def _text(page: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}">(.*?)</', page, re.S)
    assert found is not None, f"no #{element_id} on the page"
    return html.unescape(found.group(1))


def _expected(comparison: Comparison) -> dict[str, list[str]]:
    """What each row must show, read off ``compare_versions``' result."""
    reports = comparison.versions
    expected: dict[str, list[str]] = {
        "ratings": [str(r.score.count) for r in reports],
        "requests": [str(r.requests) for r in reports],
        "errors": [str(r.errors) for r in reports],
        "error_rate": [str(r.error_rate) for r in reports],
        "latency": [str(r.avg_latency_ms) for r in reports],
        "score": [f"{r.score.mean:.3f} [{r.score.low:.3f}, {r.score.high:.3f}]" for r in reports],
    }
    for name in ("accuracy", "f1_macro"):
        expected[f"metric-{name}"] = [f"{r.metrics[name]:.4f}" for r in reports]
    for key, field in (
        ("revenue_per_1k", "revenue"),
        ("cost_per_1k", "cost"),
        ("margin_per_1k", "margin"),
    ):
        expected[key] = [f"{r.per_1k(getattr(r, field))} {r.currency}" for r in reports]
    return expected


def _compare(database: Database, versions: list[int]) -> Comparison:
    with database.session() as session:
        return compare_versions(session, MODEL, versions)


def _assert_shows(page: str, comparison: Comparison) -> None:
    table = _table(page)
    for key, values in _expected(comparison).items():
        assert [shown for shown, _ in table[key]] == values, key
    for (_, exact), report in zip(table["score"], comparison.versions, strict=True):
        assert repr(report.score.mean) in exact and repr(report.score.high) in exact
    recommendation = comparison.recommendation
    assert _text(page, "recommendation-action") == recommendation.action
    assert _text(page, "recommendation-reason") == recommendation.reason
    assert _text(page, "recommendation-rule") == f"Rule: {recommendation.rule}"


def test_the_two_newest_versions_are_compared_by_default(
    admin: Dashboard, seeded: Database
) -> None:
    response = admin.client.get("/dashboard/compare", params={"model": MODEL})
    assert response.status_code == 200, response.text
    comparison = _compare(seeded, [2, 3])
    assert [r.version for r in comparison.versions] == [2, 3]
    # The seed makes every measure non-trivial, so equal numbers mean something.
    assert all(r.revenue > 0 and r.cost > 0 and r.score.count >= 10 for r in comparison.versions)
    assert re.findall(r'<th class="num">v(\d+)</th>', response.text) == ["2", "3"]
    assert 'name="versions" value="2,3"' in response.text
    _assert_shows(response.text, comparison)


def test_chosen_versions_show_exactly_what_compare_versions_returns(
    admin: Dashboard, seeded: Database
) -> None:
    response = admin.client.get("/dashboard/compare", params={"model": MODEL, "versions": "3, 1"})
    assert response.status_code == 200, response.text
    comparison = _compare(seeded, [1, 3])
    assert comparison.versions[0].errors > 0  # an error rate to show
    assert re.findall(r'<th class="num">v(\d+)</th>', response.text) == ["1", "3"]
    _assert_shows(response.text, comparison)


def test_the_table_scrolls_in_its_container_and_the_page_is_in_the_nav(
    admin: Dashboard,
) -> None:
    page = admin.client.get("/dashboard/compare", params={"model": MODEL}).text
    assert re.search(r'<div class="table-wrap">\s*<table class="data" id="compare-table">', page)
    assert 'href="/dashboard/compare"' in page and 'aria-current="page">Compare<' in page
    overview = admin.client.get("/dashboard").text
    assert 'href="/dashboard/compare"' in overview
    assert not re.search(r"<script(?![^>]*\b(src|type=\"application/json\"))[^>]*>", page)


def test_without_a_model_the_form_lists_the_registered_models(admin: Dashboard) -> None:
    response = admin.client.get("/dashboard/compare")
    assert response.status_code == 200
    assert f'<option value="{MODEL}">' in response.text
    assert '<option value="lonely">' in response.text
    assert 'id="compare-table"' not in response.text


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"model": "no-such-model"}, 404, "no registered model named 'no-such-model'"),
        ({"model": MODEL, "versions": "1,9"}, 404, f"no version {MODEL}@9 is registered"),
        ({"model": MODEL, "versions": "one,two"}, 400, "give version numbers"),
        ({"model": MODEL, "versions": "2"}, 400, "needs at least two versions"),
        ({"model": "lonely"}, 400, "needs at least two versions"),
    ],
)
def test_a_mistake_is_a_message_on_the_form_not_a_500(
    admin: Dashboard, params: dict[str, str], status: int, message: str
) -> None:
    response = admin.client.get("/dashboard/compare", params=params)
    assert response.status_code == status
    assert message in _text(response.text, "compare-error")
    assert 'id="compare-form"' in response.text and 'id="compare-table"' not in response.text
    assert html.escape(params["model"], quote=True) in response.text  # kept for correcting


def test_without_a_session_the_page_redirects_to_login(seeded: Database) -> None:
    with TestClient(build_app(seeded)) as client:
        response = client.get(
            "/dashboard/compare", params={"model": MODEL, "versions": "1,2"}, follow_redirects=False
        )
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/dashboard/login?next=/dashboard/compare")
    assert MODEL not in _table(response.text)  # nothing of the comparison leaked
    assert "compare-table" not in response.text
