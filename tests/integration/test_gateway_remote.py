"""The whole gateway in-process, in front of real OpenAI-compatible upstreams.

The client is the official ``openai`` SDK (or plain httpx where the wire format itself is
under test); the app runs on httpx's ASGI transport; usage lands in SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import SecretStr
from sqlalchemy import select

from modelmint import accounts, registry
from modelmint.app import create_app
from modelmint.config import Settings
from modelmint.metering import UsageEvent
from modelmint.platform import Platform
from modelmint.serving.token_estimate import estimate_tokens
from modelmint.storage import Database
from modelmint.storage.tables import UsageRecord
from tests.support.mock_upstream import MockUpstream, embedding_of

REPLY = "The quick brown fox jumps over the lazy dog."
BACKUP_REPLY = "Answer from the backup."
QUESTION = "Which animal jumps over the dog?"
MESSAGES: list[Any] = [{"role": "user", "content": QUESTION}]
ADMIN_TOKEN = "admin-secret-for-tests"
KEY_ENV = "MODELMINT_TEST_MOCK_UPSTREAM_KEY"
UPSTREAM_SECRET = "sk-mock-upstream-secret"


@dataclass
class Gateway:
    platform: Platform
    http: httpx.AsyncClient  # raw HTTP, authenticated with the customer key
    sdk: openai.AsyncOpenAI
    database: Database  # the test's own handle, for reading usage rows
    key_id: str
    org_id: str
    submitted: list[Future[None]]

    def register(self, name: str, upstream: MockUpstream, **options: Any) -> str:
        """Add a remote model pointing at ``upstream``; returns its deployment id."""
        options = {"upstream_model": "mock-model", "api_key_env": KEY_ENV, **options}
        with self.database.session() as session:
            deployment = registry.add_remote_model(
                session, name, base_url=upstream.base_url, **options
            )
            return deployment.id

    async def serve(self, name: str, upstream: MockUpstream, **options: Any) -> str:
        deployment_id = self.register(name, upstream, **options)
        await self.platform.router.refresh()
        return deployment_id

    async def usage_rows(self) -> list[UsageRecord]:
        """Every usage row, once every event handed to the writer has committed."""
        await asyncio.gather(*(asyncio.wrap_future(f) for f in self.submitted))
        with self.database.session() as session:
            return list(session.scalars(select(UsageRecord)))


@pytest.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(reply=REPLY) as mock:
        yield mock


@pytest.fixture
async def backup() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(reply=BACKUP_REPLY, prompt_tokens=21, completion_tokens=5) as mock:
        yield mock


@pytest.fixture
async def gateway(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    monkeypatch.setenv(KEY_ENV, UPSTREAM_SECRET)
    url = database.url.render_as_string(hide_password=False)
    settings = Settings(
        home=tmp_path,
        database_url=url,
        load_bundled_models=False,
        admin_token=SecretStr(ADMIN_TOKEN),
        log_json=False,
    )
    with database.session() as session:
        org = accounts.ensure_org(session, "acme")
        key, secret = accounts.create_key(session, org, name="test")
        key_id, org_id = key.id, org.id
    # The platform gets its own engine: close() disposes it, the fixture's stays usable.
    platform = Platform.build(settings, Database(url))
    submitted: list[Future[None]] = []
    submit = platform.writer.submit

    def tracked_submit(event: UsageEvent) -> Future[None]:
        future = submit(event)
        submitted.append(future)
        return future

    platform.writer.submit = tracked_submit  # type: ignore[method-assign]
    await platform.start()
    app = create_app(settings, platform)
    app.state.platform = platform
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {secret}"}
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as http,
        httpx.AsyncClient(transport=transport) as sdk_http,
    ):
        sdk = openai.AsyncOpenAI(
            base_url="http://gw/v1",
            api_key=secret,
            http_client=sdk_http,  # type: ignore[arg-type]  # typed for httpx2, takes httpx
            max_retries=0,
        )
        try:
            yield Gateway(platform, http, sdk, database, key_id, org_id, submitted)
        finally:
            await platform.close()


def sse_payloads(body: str) -> list[Any]:
    """The data of each server-sent event, JSON-decoded except the final ``[DONE]``."""
    events = [line.removeprefix("data: ") for line in body.split("\n\n") if line]
    return [e if e == "[DONE]" else orjson.loads(e) for e in events]


# -- answers and their usage ---------------------------------------------------------------


async def test_chat_answers_from_the_upstream_under_the_public_name(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    deployment_id = await gateway.serve("remote-chat", upstream)

    answer = await gateway.sdk.chat.completions.create(model="remote-chat", messages=MESSAGES)

    assert answer.model == "remote-chat"
    assert answer.choices[0].message.content == REPLY
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (13, 9)
    assert answer.usage.total_tokens == 22
    sent = upstream.requests[0]
    assert sent.body["model"] == "mock-model"
    assert sent.body["messages"] == MESSAGES
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    [row] = await gateway.usage_rows()
    assert row.model == "remote-chat"
    assert row.endpoint == "chat.completions"
    assert row.deployment_id == deployment_id
    assert (row.organization_id, row.api_key_id) == (gateway.org_id, gateway.key_id)
    assert (row.status_code, row.input_tokens, row.output_tokens) == (200, 13, 9)
    assert (row.streamed, row.usage_estimated, row.finish_reason) == (False, False, "stop")


async def test_a_stream_passes_chunks_through_and_ends_with_usage(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("remote-chat", upstream)

    stream = await gateway.sdk.chat.completions.create(
        model="remote-chat",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert {c.model for c in chunks} == {"remote-chat"}
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (13, 9)
    assert all(c.usage is None for c in chunks[:-1])
    assert upstream.requests[0].body["stream_options"] == {"include_usage": True}
    [row] = await gateway.usage_rows()
    assert (row.status_code, row.input_tokens, row.output_tokens) == (200, 13, 9)
    assert (row.streamed, row.usage_estimated, row.finish_reason) == (True, False, "stop")


async def test_the_stream_on_the_wire_ends_with_a_usage_chunk_and_done(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("remote-chat", upstream)
    body = {
        "model": "remote-chat",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async with gateway.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        wire = (await response.aread()).decode()

    events = sse_payloads(wire)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 13, "completion_tokens": 9, "total_tokens": 22}
    assert events[-3]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert len({e["id"] for e in events[:-1]}) == 1


async def test_without_upstream_usage_the_gateway_meters_an_estimate(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("remote-chat", upstream)
    upstream.omit_usage = True
    expected = (estimate_tokens(QUESTION), estimate_tokens(REPLY))
    assert min(expected) > 0

    answer = await gateway.sdk.chat.completions.create(model="remote-chat", messages=MESSAGES)
    stream = await gateway.sdk.chat.completions.create(
        model="remote-chat", messages=MESSAGES, stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert streamed == REPLY
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == expected
    rows = sorted(await gateway.usage_rows(), key=lambda r: r.streamed)
    assert [(r.streamed, r.usage_estimated) for r in rows] == [(False, True), (True, True)]
    assert [(r.input_tokens, r.output_tokens) for r in rows] == [expected, expected]


async def test_a_stream_cut_by_the_upstream_ends_with_an_error_and_meters_what_was_sent(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("remote-chat", upstream)
    upstream.cut_stream_after = 3  # "The quick brown " then the connection drops
    body = {"model": "remote-chat", "messages": MESSAGES, "stream": True}

    response = await gateway.http.post("/v1/chat/completions", json=body)

    assert response.status_code == 200  # the stream had begun: the error goes in-band
    events = sse_payloads(response.text)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "The quick brown "
    assert events[-1]["error"]["code"] == "bad_gateway"
    [row] = await gateway.usage_rows()
    assert (row.streamed, row.usage_estimated, row.finish_reason) == (True, True, "error")
    sent = estimate_tokens("The quick brown ")
    assert (row.input_tokens, row.output_tokens) == (estimate_tokens(QUESTION), sent)
    assert len(upstream.requests) == 1


async def test_remote_embeddings_reach_the_client_decoded(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("remote-embed", upstream, task="embedding")
    texts = ["first text", "second"]

    # The SDK asks for base64 and decodes it: the vectors must survive the round trip.
    result = await gateway.sdk.embeddings.create(model="remote-embed", input=texts)

    assert [d.embedding for d in result.data] == [embedding_of(t, i) for i, t in enumerate(texts)]
    assert result.model == "remote-embed"
    assert result.usage.prompt_tokens == 13
    [row] = await gateway.usage_rows()
    assert (row.endpoint, row.input_tokens, row.output_tokens) == ("embeddings", 13, 0)


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_upstream_falls_back_to_the_backup_model(
    gateway: Gateway, upstream: MockUpstream, backup: MockUpstream, stream: bool
) -> None:
    backup_id = await gateway.serve("backup-chat", backup)
    await gateway.serve("flaky-chat", upstream, fallback="backup-chat", max_retries=1)
    upstream.fail_next(2, status=503)

    if stream:
        chunks = await gateway.sdk.chat.completions.create(
            model="flaky-chat", messages=MESSAGES, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    else:
        answer = await gateway.sdk.chat.completions.create(model="flaky-chat", messages=MESSAGES)
        text = answer.choices[0].message.content or ""
        assert answer.model == "flaky-chat"

    assert text == BACKUP_REPLY
    assert len(upstream.requests) == 2  # one try and one retry, then the fallback
    assert len(backup.requests) == 1
    [row] = await gateway.usage_rows()
    assert row.model == "flaky-chat"
    assert row.deployment_id == backup_id
    assert (row.status_code, row.input_tokens, row.output_tokens) == (200, 21, 5)
    assert row.streamed is stream


@pytest.mark.parametrize(
    ("upstream_status", "status", "error"),
    [
        (
            500,
            502,
            {
                "message": "upstream error: mock upstream failure 500",
                "type": "api_error",
                "param": None,
                "code": "bad_gateway",
            },
        ),
        (
            400,
            400,
            {
                "message": "upstream refused the request: mock upstream failure 400",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            },
        ),
        (
            429,
            429,
            {
                "message": "upstream is rate limited: mock upstream failure 429",
                "type": "rate_limit_error",
                "param": None,
                "code": "upstream_rate_limited",
            },
        ),
    ],
)
async def test_a_failing_upstream_without_fallback_answers_in_the_openai_error_shape(
    gateway: Gateway,
    upstream: MockUpstream,
    upstream_status: int,
    status: int,
    error: dict[str, Any],
) -> None:
    await gateway.serve("remote-chat", upstream, max_retries=0)
    upstream.fail_next(1, status=upstream_status, retry_after="7")

    response = await gateway.http.post(
        "/v1/chat/completions", json={"model": "remote-chat", "messages": MESSAGES}
    )

    assert response.status_code == status
    assert response.json() == {"error": error}
    if status == 429:
        assert response.headers["retry-after"] == "7"
    [row] = await gateway.usage_rows()
    assert (row.status_code, row.input_tokens, row.output_tokens) == (status, 0, 0)


async def test_the_sdk_sees_a_502_as_an_api_status_error(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("remote-chat", upstream, max_retries=0)
    upstream.fail_next(1, status=500)

    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.sdk.chat.completions.create(model="remote-chat", messages=MESSAGES)

    assert caught.value.status_code == 502
    assert caught.value.body == {
        "message": "upstream error: mock upstream failure 500",
        "type": "api_error",
        "param": None,
        "code": "bad_gateway",
    }


# -- administration ------------------------------------------------------------------------


async def test_a_remote_model_added_through_the_admin_api_is_callable_at_once(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    spec = {
        "name": "admin-chat",
        "base_url": upstream.base_url,
        "api_key_env": KEY_ENV,
        "upstream_model": "mock-model",
    }

    refused = await gateway.http.post("/admin/models/remote", json=spec)
    created = await gateway.http.post("/admin/models/remote", json=spec, headers=admin)

    assert refused.status_code == 401  # the customer key is not the admin token
    assert created.status_code == 201
    assert created.json()["name"] == "admin-chat"
    answer = await gateway.sdk.chat.completions.create(model="admin-chat", messages=MESSAGES)
    assert answer.choices[0].message.content == REPLY
    assert [m.id async for m in gateway.sdk.models.list()] == ["admin-chat"]
    [row] = await gateway.usage_rows()
    assert row.deployment_id == created.json()["deployment_id"]
    assert upstream.requests[0].headers["authorization"] == f"Bearer {UPSTREAM_SECRET}"


async def test_a_number_too_large_to_forward_is_a_400_not_a_500(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("mock", upstream)
    huge = 2**64  # valid JSON, but beyond what any OpenAI-compatible server reads
    response = await gateway.http.post(
        "/v1/chat/completions",
        json={"model": "mock", "messages": [{"role": "user", "content": "hi", "x": huge}]},
    )
    assert response.status_code == 400, response.text
    assert "cannot be forwarded" in response.json()["error"]["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/admin/organizations/acme/limits", "PUT"),
        ("/admin/keys", "POST"),
        ("/v1/feedback", "POST"),
    ],
)
@pytest.mark.parametrize("body", [b"\x00", b"\xc3\x28"], ids=["not-json", "not-utf8"])
async def test_a_body_that_is_not_json_is_judged_only_after_the_caller_is(
    gateway: Gateway, path: str, method: str, body: bytes
) -> None:
    """FastAPI parses a JSON body before it runs a route's dependencies: without the
    error handler's check, a caller without a secret would learn about its body."""

    def send(secret: str) -> Any:
        headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        return gateway.http.request(method, path, content=body, headers=headers)

    anonymous = await send("mm-wrong")
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"] == "Bearer"
    customer = gateway.http.headers["authorization"].removeprefix("Bearer ")
    allowed = await send(ADMIN_TOKEN if path.startswith("/admin") else customer)
    assert allowed.status_code == 400
    assert allowed.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("max_tokens", ["20", True])
async def test_max_tokens_that_is_not_an_integer_is_a_400_naming_it(
    gateway: Gateway, upstream: MockUpstream, max_tokens: object
) -> None:
    await gateway.serve("mock", upstream)
    response = await gateway.http.post(
        "/v1/chat/completions",
        json={"model": "mock", "messages": MESSAGES, "max_tokens": max_tokens},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "max_tokens")
    assert "max_tokens" in error["message"]
    assert upstream.requests == []


# -- operations ----------------------------------------------------------------------------


def http_requests(metrics: str, route: str, status: str) -> float:
    """The value of ``modelmint_http_requests_total`` for one route and status."""
    wanted = f'modelmint_http_requests_total{{route="{route}",status="{status}"}} '
    for line in metrics.splitlines():
        if line.startswith(wanted):
            return float(line.removeprefix(wanted))
    return 0.0


async def test_metrics_label_requests_with_their_route_template(
    gateway: Gateway, upstream: MockUpstream
) -> None:
    await gateway.serve("mock", upstream)
    expected = [
        ("/v1/chat/completions", "200"),
        ("/v1/chat/completions", "400"),
        ("/v1/chat/completions", "405"),
        ("/v1/models", "200"),
        ("/v1/models/{model:path}", "404"),
        ("unmatched", "404"),
    ]
    before = (await gateway.http.get("/metrics")).text

    await gateway.sdk.chat.completions.create(model="mock", messages=MESSAGES)
    await gateway.http.post("/v1/chat/completions", json={"model": "mock"})
    await gateway.http.get("/v1/chat/completions")
    await gateway.http.get("/v1/models")
    await gateway.http.get("/v1/models/no-such-model")
    await gateway.http.get("/v1/no-such-route")

    after = (await gateway.http.get("/metrics")).text
    for route, status in expected:
        grown = http_requests(after, route, status) - http_requests(before, route, status)
        assert grown == 1, (route, status)


async def test_the_admin_api_revokes_a_key_by_its_secret_and_never_logs_it(
    gateway: Gateway, upstream: MockUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    await gateway.serve("mock", upstream)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    secret = gateway.http.headers["authorization"].removeprefix("Bearer ")
    wrong = secret[:11] + "x" * (len(secret) - 11)

    with caplog.at_level(logging.INFO, logger="modelmint.access"):
        missing = await gateway.http.post(f"/admin/keys/{wrong}/revoke", headers=admin)
        revoked = await gateway.http.post(f"/admin/keys/{secret}/revoke", headers=admin)

    assert missing.status_code == 404 and wrong not in missing.text
    assert revoked.status_code == 200 and revoked.json()["id"] == gateway.key_id
    assert secret not in revoked.text
    assert [getattr(record, "path", None) for record in caplog.records] == [
        f"/admin/keys/{wrong[:11]}.../revoke",
        f"/admin/keys/{secret[:11]}.../revoke",
    ]
    assert all(secret[11:] not in str(record.__dict__) for record in caplog.records)
    refused = await gateway.http.post("/v1/chat/completions", json={"model": "mock"})
    assert refused.status_code == 401
