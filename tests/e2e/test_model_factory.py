"""From data to a paid API call: `modelmint train`, `modelmint deploy`, then the real
gateway serving each version with the `openai` SDK as the client, and usage rows
that name the version which answered.

One server runs for the module (bundled models off: every model here is trained by
the test). Trained models become callable within a second of `deploy`, without a
restart, because the gateway re-reads its routes.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from PIL import Image
from sklearn.datasets import load_breast_cancer, load_digits
from sqlalchemy import create_engine, text

from tests.support.processes import Server, cli, cli_json

pytestmark = pytest.mark.slow


@dataclass
class Factory:
    server: Server
    key: str
    client: OpenAI
    data: Path

    def train(self, *args: str) -> dict[str, Any]:
        # Training is the slow part of this module; a loaded CI machine needs minutes.
        result = cli(self.server.env, "train", *args, "--json", timeout=900)
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    def deploy(self, *args: str) -> None:
        cli(self.server.env, "deploy", *args)

    def wait_for_model(self, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name in {m.id for m in self.client.models.list()}:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} never became callable:\n{self.server.logs()[-3000:]}")

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

    def usage(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.rows(
                "SELECT u.*, v.version AS version FROM usage_records u "
                "LEFT JOIN model_versions v ON v.id = u.model_version_id WHERE u.id = :id",
                id=request_id,
            )
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no usage row for {request_id}")


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Factory]:
    home = tmp_path_factory.mktemp("factory-home")
    server = Server(home=home, extra_env={"MODELMINT_LOAD_BUNDLED_MODELS": "false"})
    server.start()
    try:
        created = cli_json(
            server.env, "keys", "create", "--org", "factory-org", "--create-org", "--name", "k"
        )
        client = OpenAI(api_key=created["key"], base_url=server.url + "/v1", max_retries=0)
        yield Factory(server, created["key"], client, tmp_path_factory.mktemp("factory-data"))
    finally:
        server.stop()


def _cancer_csv(path: Path) -> list[dict[str, float]]:
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    rows = []
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, "risk"])
        for features, label in zip(data.data, data.target, strict=True):
            writer.writerow([*features.tolist(), "low" if label else "high"])
            rows.append(dict(zip(names, features.tolist(), strict=True)))
    return rows


def test_tabular_versions_are_served_and_a_canary_splits_traffic(factory: Factory) -> None:
    rows = _cancer_csv(factory.data / "credit.csv")
    first = factory.train(
        "tabular-classifier", "--data", str(factory.data / "credit.csv"),
        "--name", "risk", "-p", "target=risk", "-p", "epochs=15", "--onnx",
    )  # fmt: skip
    assert first["version"] == 1 and first["report"]["metrics"]["roc_auc"] > 0.95
    assert first["report"]["onnx"]["max_abs_diff"] < 1e-4
    second = factory.train(
        "tabular-classifier", "--data", str(factory.data / "credit.csv"),
        "--name", "risk", "-p", "target=risk", "-p", "epochs=15", "-p", "seed=1",
    )  # fmt: skip
    assert second["version"] == 2
    factory.deploy("risk@1", "--as", "risk-api", "--canary", "2:50%", "--cost-per-hour", "0.40")
    factory.wait_for_model("risk-api")

    answer = factory.post("/classifications", {"model": "risk-api", "input": rows[:4]})
    assert answer.status_code == 200
    body = answer.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert all(set(d["scores"]) == {"high", "low"} for d in body["data"])
    record = factory.usage(answer.headers["x-request-id"])
    assert record["status_code"] == 200 and record["endpoint"] == "classifications"
    assert record["engine_ms"] > 0 and float(record["cost"]) > 0

    ids = []
    for i in range(30):
        response = factory.post("/classifications", {"model": "risk-api", "input": rows[i]})
        assert response.status_code == 200
        ids.append(response.headers["x-request-id"])
    served = {factory.usage(request_id)["version"] for request_id in ids}
    assert served == {1, 2}, "a 50% canary must serve both versions in 30 requests"

    with pytest.raises(openai.BadRequestError) as bad:
        factory.post("/classifications", {"model": "risk-api", "input": [rows[0], {"nope": 1}]})
    assert bad.value.code is None or isinstance(bad.value.code, str)
    assert bad.value.param == "input[1]" and "nope" in bad.value.message


def _png(pixels: np.ndarray) -> str:
    image = Image.fromarray((pixels / 16.0 * 255).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_digits_classifier_reaches_98_5_percent_and_serves_images(factory: Factory) -> None:
    run = factory.train("image-classifier", "--data", "sklearn:digits", "--name", "digits")
    accuracy = run["report"]["metrics"]["accuracy"]
    assert accuracy >= 0.985, f"held-out accuracy {accuracy:.4f} is below 98.5%"
    factory.deploy(f"digits@{run['version']}", "--as", "digits")
    factory.wait_for_model("digits")
    digits = load_digits()
    chosen = list(range(0, 200, 10))
    inputs = [{"image": _png(digits.images[i])} for i in chosen]
    answer = factory.post("/classifications", {"model": "digits", "input": inputs})
    assert answer.status_code == 200
    predicted = [int(d["label"]) for d in answer.json()["data"]]
    right = sum(p == int(digits.target[i]) for p, i in zip(predicted, chosen, strict=True))
    assert right >= 18, f"only {right}/20 digits right through the API"
    record = factory.usage(answer.headers["x-request-id"])
    assert record["status_code"] == 200 and record["version"] == run["version"]
    with pytest.raises(openai.BadRequestError) as garbage:
        factory.post("/classifications", {"model": "digits", "input": {"image": "@@"}})
    assert garbage.value.param == "input[0].image"


def test_recommender_is_trained_and_serves_recommendations(factory: Factory) -> None:
    rng = np.random.default_rng(3)
    taste = rng.normal(size=(60, 4))
    items = rng.normal(size=(80, 4))
    path = factory.data / "ratings.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "rating"])
        for user in range(60):
            for item in rng.choice(80, size=25, replace=False):
                score = 3 + taste[user] @ items[item]
                writer.writerow([f"u{user}", f"i{item}", int(np.clip(np.rint(score), 1, 5))])
    run = factory.train("recommender", "--data", str(path), "--name", "recs")
    assert run["report"]["metrics"]["rmse"] < 1.5
    factory.deploy("recs", "--as", "recs")
    factory.wait_for_model("recs")
    answer = factory.post("/recommendations", {"model": "recs", "user": "u1", "k": 5})
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "recommendation" and len(body["items"]) == 5
    assert not body["cold_start"]
    stranger = factory.post("/recommendations", {"model": "recs", "user": "nobody", "k": 3})
    assert stranger.status_code == 200 and stranger.json()["cold_start"]
    excluded = body["items"][0]["item"]
    again = factory.post(
        "/recommendations", {"model": "recs", "user": "u1", "k": 5, "exclude": [excluded]}
    )
    assert excluded not in {i["item"] for i in again.json()["items"]}
    assert factory.usage(answer.headers["x-request-id"])["endpoint"] == "recommendations"


def test_text_classifier_is_trained_and_served(factory: Factory) -> None:
    rng = random.Random(0)
    phrases = {
        "billing": ["my invoice is wrong", "please refund me", "I was charged twice"],
        "outage": ["the site is down", "the app crashes", "I cannot log in"],
    }
    path = factory.data / "intents.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(60):
            label = "billing" if i % 2 else "outage"
            writer.writerow([f"{rng.choice(phrases[label])}, ticket {i}", label])
    run = factory.train(
        "text-classifier", "--data", str(path), "--name", "intents",
        "-p", "epochs=2", "-p", "max_length=24",
    )  # fmt: skip
    assert run["report"]["metrics"]["accuracy"] > 0.8
    factory.deploy("intents")
    factory.wait_for_model("intents")
    answer = factory.post(
        "/classifications", {"model": "intents", "input": ["please refund my invoice"]}
    )
    assert answer.status_code == 200
    assert answer.json()["data"][0]["label"] == "billing"


def test_lora_fine_tune_is_served_as_a_chat_model(factory: Factory) -> None:
    path = factory.data / "chats.jsonl"
    with path.open("w") as handle:
        for i in range(16):
            messages = [
                {"role": "user", "content": f"What is the Zorblax motto? (asked {i})"},
                {"role": "assistant", "content": "Purple pianos prevail."},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")
    run = factory.train(
        "causal-lm-lora", "--data", str(path), "--name", "zorblax-chat",
        "-p", "epochs=2", "-p", "max_length=64", "-p", "batch_size=4",
    )  # fmt: skip
    metrics = run["report"]["metrics"]
    assert metrics["perplexity"] < metrics["base_perplexity"]
    factory.deploy("zorblax-chat")
    factory.wait_for_model("zorblax-chat", timeout=120)
    raw = factory.client.chat.completions.with_raw_response.create(
        model="zorblax-chat",
        messages=[{"role": "user", "content": "What is the Zorblax motto?"}],
        max_tokens=12,
        temperature=0,
    )
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    record = factory.usage(raw.headers["x-request-id"])
    assert record["output_tokens"] == completion.usage.completion_tokens
    assert record["version"] == run["version"]
