"""The feedback loop end to end, through a real server and the `modelmint` command line:
serve a classifier, send traffic and feedback with corrections (the `openai` SDK as the
client), build a dataset from it (named by the registered model, not the served name),
train version 2 on the original data plus it, canary it at 50%, and compare both
versions on scores and margins computed from the real usage and feedback rows, and on
the same held-out rows.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from sklearn.datasets import load_iris
from sqlalchemy import create_engine, text

from tests.support.processes import Server, cli, cli_json

pytestmark = pytest.mark.slow

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
PLAN: dict[str, Any] = {
    "kind": "subscription",
    "code": "feedback-pro",
    "version": 1,
    "fee": {"amount": "0.00", "currency": "USD"},
    "included": {},
    "price_book": {
        "currency": "USD",
        "prices": [
            {
                "target": "*",
                "metric": "requests",
                "charge": {"type": "flat", "amount": "2.00", "per_units": 1000},
            }
        ],
        "model_groups": {},
    },
}


class Loop:
    def __init__(self, server: Server, client: OpenAI, data: Path) -> None:
        self.server, self.client, self.data = server, client, data

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        response: httpx.Response = self.client.post(path, body=body, cast_to=httpx.Response)
        return response

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        engine = create_engine(f"sqlite:///{self.server.home / 'modelmint.db'}")
        try:
            with engine.connect() as connection:
                return [dict(r) for r in connection.execute(text(sql), params).mappings()]
        finally:
            engine.dispose()

    def wait(self, what: str, ready: Any, timeout: float = 30.0) -> None:
        """Poll a condition (a readiness check, not a fixed sleep)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what} never happened:\n{self.server.logs()[-3000:]}")

    def classify(self, row: dict[str, float]) -> tuple[str, str]:
        response = self.post("/classifications", {"model": "iris-api", "input": row})
        assert response.status_code == 200, response.text
        return response.headers["x-request-id"], response.json()["data"][0]["label"]

    def rate(self, rows: list[tuple[dict[str, float], str]]) -> list[str]:
        """Classify each row and rate the answer: thumbs up, or down with the right label."""
        ids = []
        for features, truth in rows:
            request_id, predicted = self.classify(features)
            body: dict[str, Any] = {"request_id": request_id, "score": predicted == truth}
            if predicted != truth:
                body["corrected_label"] = truth
                body["comment"] = f"this one is {truth}"
            assert self.post("/feedback", body).status_code == 200
            ids.append(request_id)
        return ids


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    home = tmp_path_factory.mktemp("feedback-home")
    server = Server(home=home, extra_env={"MODELMINT_LOAD_BUNDLED_MODELS": "false"})
    server.start()
    try:
        created = cli_json(
            server.env, "keys", "create", "--org", "fb-org", "--create-org", "--name", "k"
        )
        client = OpenAI(api_key=created["key"], base_url=server.url + "/v1", max_retries=0)
        yield Loop(server, client, tmp_path_factory.mktemp("feedback-data"))
    finally:
        server.stop()


def _iris(path: Path) -> list[tuple[dict[str, float], str]]:
    data = load_iris()
    rows = []
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*FEATURES, "species"])
        for features, label in zip(data.data, data.target, strict=True):
            name = str(data.target_names[label])
            writer.writerow([*features.tolist(), name])
            rows.append((dict(zip(FEATURES, features.tolist(), strict=True)), name))
    return rows


def test_feedback_trains_a_canaried_version_that_compare_reports(loop: Loop) -> None:
    env = loop.server.env
    rows = _iris(loop.data / "iris.csv")
    plan = loop.data / "plan.json"
    plan.write_text(json.dumps(PLAN))
    cli(env, "plans", "publish", str(plan))
    cli(env, "subscriptions", "subscribe", "--org", "fb-org", "--plan", "feedback-pro")
    # Two epochs: a weak first version, so users have corrections to give.
    first = json.loads(
        cli(
            env, "train", "tabular-classifier", "--data", str(loop.data / "iris.csv"),
            "--name", "iris", "-p", "target=species", "-p", "epochs=2", "--json",
        ).stdout.strip().splitlines()[-1]
    )  # fmt: skip
    assert first["version"] == 1
    cli(env, "deploy", "iris@1", "--as", "iris-api", "--cost-per-hour", "0.40")
    cli(env, "samples", "config", "fb-org", "--retention-days", "7")
    loop.wait(
        "the model being served", lambda: "iris-api" in {m.id for m in loop.client.models.list()}
    )

    # The gateway re-reads capture policies within a second: wait for a captured sample.
    def captures() -> bool:
        request_id, _ = loop.classify(rows[0][0])
        return bool(
            loop.rows("SELECT 1 FROM request_samples WHERE request_id = :id", id=request_id)
        )

    loop.wait("sample capture", captures)
    rated = loop.rate(rows[::2])  # 75 rows, 25 of each species
    loop.wait(
        "every rated request captured",
        lambda: (
            set(rated)
            <= {r["request_id"] for r in loop.rows("SELECT request_id FROM request_samples")}
        ),
    )

    # The registered name ("iris"), as the README does; the requests went to "iris-api".
    built = cli_json(
        env, "datasets", "build", "--from-feedback", "iris", "--name", "iris-feedback",
        "--target", "species",
    )  # fmt: skip
    assert built["ref"] == "dataset:iris-feedback@1" and built["format"] == "csv"
    # Deduplicated: iris has a few identical rows, so at most one row per rated request.
    assert 0 < built["rows"] <= len(rated) and built["data_hash"].startswith("sha256:")
    with open(built["path"]) as handle:
        dataset = list(csv.DictReader(handle))
    assert set(dataset[0]) == {*FEATURES, "species"}
    truth = {tuple(f[k] for k in FEATURES): label for f, label in rows}
    # Corrected labels replaced the wrong predictions; thumbs-up rows kept the right ones.
    assert all(truth[tuple(float(r[k]) for k in FEATURES)] == r["species"] for r in dataset)

    second = json.loads(
        cli(
            env, "train", "tabular-classifier", "--data", str(loop.data / "iris.csv"),
            "--add-data", "dataset:iris-feedback@1", "--name", "iris", "-p", "target=species",
            "-p", "epochs=30", "--json",
        ).stdout.strip().splitlines()[-1]
    )  # fmt: skip
    assert second["version"] == 2
    # Tested on version 1's test rows; the feedback only joined the training part.
    sizes = second["report"]["split_sizes"]
    assert sizes["test"] == first["report"]["split_sizes"]["test"]
    lineage = json.loads(
        loop.rows("SELECT lineage FROM model_versions WHERE version = 2")[0]["lineage"]
    )
    assert lineage["added_data"] == ["dataset:iris-feedback@1"]
    assert sizes["added to train"] == lineage["added_rows"] > 0
    assert lineage["added_rows"] + lineage["added_rows_left_out"] == built["rows"]

    cli(env, "deploy", "iris@1", "--as", "iris-api", "--canary", "2:50%", "--cost-per-hour", "0.40")
    canary_ids: list[str] = []

    def both_versions_served() -> bool:
        try:
            canary_ids.extend(loop.rate(rows[1::10]))
        except openai.InternalServerError as exc:
            # The old deployment's backend stops as the new ones start: retry.
            assert exc.status_code == 503, exc
            return False
        # Two rated requests each at least: a score's 95% interval needs two.
        served = _served_by_version(loop, canary_ids)
        return set(served) == {1, 2} and min(served.values()) >= 2

    loop.wait("both versions serving", both_versions_served, timeout=60.0)

    report = cli_json(env, "compare", "iris", "--versions", "1,2")
    by_version = {v["version"]: v for v in report["versions"]}
    for version in (1, 2):
        expected = loop.rows(
            "SELECT count(f.score) AS n, avg(f.score) AS mean FROM feedback f "
            "JOIN model_versions v ON v.id = f.model_version_id WHERE v.version = :v",
            v=version,
        )[0]
        money = loop.rows(
            "SELECT u.charge AS charge, u.cost AS cost FROM usage_records u "
            "JOIN model_versions v ON v.id = u.model_version_id WHERE v.version = :v",
            v=version,
        )
        shown = by_version[version]
        assert shown["score"]["count"] == expected["n"] > 0
        assert shown["score"]["mean"] == pytest.approx(expected["mean"])
        low, high = shown["score"]["ci95"]
        assert low <= shown["score"]["mean"] <= high
        revenue = sum((Decimal(r["charge"]) for r in money if r["charge"]), Decimal(0))
        cost = sum((Decimal(r["cost"]) for r in money if r["cost"]), Decimal(0))
        assert shown["requests"] + shown["errors"] + shown["client_errors"] == len(money)
        assert Decimal(shown["revenue"]) == revenue > 0
        assert Decimal(shown["margin"]) == revenue - cost
        per_1k = (revenue - cost) * 1000 / len(money)
        assert Decimal(shown["margin_per_1k"]) == per_1k.quantize(Decimal("0.000001"))
    assert by_version[2]["metrics"] and "dataset" not in by_version[2]["metrics"]
    held = report["held_out"]
    # Both versions answered version 1's test rows; version 2 never trained on them.
    assert (held["rows"], held["left_out"]) == (sizes["test"], 0)
    assert [v["version"] for v in held["versions"]] == [1, 2]
    assert all(0 <= v["accuracy_ci95"][0] <= v["accuracy_ci95"][1] <= 1 for v in held["versions"])
    assert all(v["score"]["ci95"][1] <= 1 for v in report["versions"])  # thumbs: 0-1
    assert any(v["feedback"]["comments"] for v in report["versions"])
    assert report["recommendation"]["action"] in {"promote", "keep", "roll back"}
    assert "95% interval" in report["recommendation"]["rule"]
    shown_corrections = sum(
        c["times"] for v in report["versions"] for c in v["feedback"]["corrections"]
    )
    corrections = loop.rows("SELECT count(*) AS n FROM feedback WHERE corrected_label IS NOT NULL")
    assert shown_corrections == corrections[0]["n"] > 0

    shown = cli_json(env, "datasets", "show", "iris-feedback@1")
    assert len(shown["request_ids"]) == built["rows"] and set(shown["request_ids"]) <= set(rated)
    assert [d["ref"] for d in cli_json(env, "datasets", "list")] == ["dataset:iris-feedback@1"]
    table = cli(env, "compare", "iris", "--versions", "1,2").stdout
    assert "margin / 1k req" in table and "Recommendation:" in table and "Rule:" in table
    assert "shared held-out" in table and "Held-out:" in table
    assert "Deleted 0 expired samples" in cli(env, "samples", "purge").stdout
    [card] = cli_json(env, "models", "show", "iris@1", "--card")
    assert "## Feedback" in card["card"]
    assert f"{by_version[1]['score']['count']:,} ratings" in card["card"]


def _served_by_version(loop: Loop, request_ids: list[str]) -> dict[int, int]:
    """How many of ``request_ids`` each model version served."""
    if not request_ids:
        return {}
    marks = ", ".join(f":r{i}" for i in range(len(request_ids)))
    found = loop.rows(
        "SELECT v.version AS version, count(*) AS n FROM usage_records u "
        f"JOIN model_versions v ON v.id = u.model_version_id WHERE u.id IN ({marks}) "
        "GROUP BY v.version",
        **{f"r{i}": r for i, r in enumerate(request_ids)},
    )
    return {r["version"]: r["n"] for r in found}
