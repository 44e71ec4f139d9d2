"""The official openai SDK against a real `modelmint up` process and the real bundled models."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import LiveServer

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"


def test_chat_answer_has_usage_and_one_matching_usage_row(live: LiveServer, client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=24,
        temperature=0,
        seed=7,
    )
    assert reply.model == CHAT_MODEL
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 24
    row = live.usage_row_of(reply.id)
    assert row is not None
    assert (row["input_tokens"], row["output_tokens"]) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert row["status_code"] == 200 and row["model"] == CHAT_MODEL and not row["streamed"]
    assert row["api_key_id"] == live.key_id
    assert row["engine_ms"] > 0  # the local engine's busy time charged to this request


def test_greedy_chat_with_a_seed_is_reproducible(client: OpenAI) -> None:
    def ask() -> str | None:
        reply = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "Count to five."}],
            max_tokens=16,
            temperature=0,
        )
        return reply.choices[0].message.content

    assert ask() == ask()


def test_stream_ends_with_a_usage_chunk_that_matches_the_usage_row(
    live: LiveServer, client: OpenAI
) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say something about the sea."}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes in (["stop"], ["length"])
    row = live.usage_row_of(last.id)
    assert row is not None and row["streamed"]
    assert (row["input_tokens"], row["output_tokens"]) == (
        last.usage.prompt_tokens,
        last.usage.completion_tokens,
    )


def test_stop_sequence_cuts_the_answer(client: OpenAI) -> None:
    reply = client.completions.create(
        model=CHAT_MODEL, prompt="1, 2, 3, 4,", max_tokens=30, temperature=0, stop=[","]
    )
    assert "," not in reply.choices[0].text
    assert reply.choices[0].finish_reason == "stop"


def test_text_completion_counts_tokens(client: OpenAI) -> None:
    reply = client.completions.create(model=CHAT_MODEL, prompt="The sky is", max_tokens=8)
    assert reply.object == "text_completion"
    assert reply.usage is not None and reply.usage.prompt_tokens == 3
    assert reply.usage.completion_tokens <= 8


def test_embeddings_float_and_base64_agree(live: LiveServer, client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=EMBED_MODEL, input=["hello world", "a second text"]
    )
    floats = raw.parse()
    assert [len(d.embedding) for d in floats.data] == [384, 384]
    assert np.isclose(np.linalg.norm(floats.data[0].embedding), 1.0, atol=1e-4)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    row = live.usage_row(raw.headers["x-request-id"])
    assert row is not None and row["input_tokens"] == floats.usage.prompt_tokens

    # The SDK decodes base64 by itself; ask the raw wire format to check the encoding.
    body = httpx.post(
        live.base_url + "/embeddings",
        headers={"Authorization": f"Bearer {live.key}"},
        json={"model": EMBED_MODEL, "input": "hello world", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, floats.data[0].embedding, atol=1e-6)


def test_models_list_shows_the_bundled_models(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_wrong_key_gets_401_in_openai_shape(live: LiveServer) -> None:
    bad = OpenAI(base_url=live.base_url, api_key="mm-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "message": "incorrect API key provided",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


def test_model_scope_gives_403_and_unknown_model_404(live: LiveServer) -> None:
    scoped = live.new_key("--org", "e2e-org", "--models", EMBED_MODEL)
    client = OpenAI(base_url=live.base_url, api_key=scoped["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert denied.value.body["code"] == "model_not_allowed"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="no-such-model", input="x")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert [m.id for m in client.models.list()] == [EMBED_MODEL]
    assert client.embeddings.create(model=EMBED_MODEL, input="allowed").data


def test_revoked_key_is_refused_within_a_second(live: LiveServer) -> None:
    from tests.support.processes import cli

    key = live.new_key("--org", "e2e-org")
    client = OpenAI(base_url=live.base_url, api_key=key["key"], max_retries=0)
    assert client.models.list().data
    cli(live.server.env, "keys", "revoke", key["id"])
    revoked_at = time.monotonic()
    while True:
        try:
            client.models.list()
        except openai.AuthenticationError as exc:
            assert exc.body["code"] == "revoked_api_key"  # type: ignore[index]
            break
        assert time.monotonic() - revoked_at < 1.5, "revocation not honoured in time"
        time.sleep(0.05)


def test_rate_limit_gives_429_with_retry_after(live: LiveServer) -> None:
    key = live.new_key("--org", "e2e-org", "--rpm", "2")
    client = OpenAI(base_url=live.base_url, api_key=key["key"], max_retries=0)
    first = client.embeddings.with_raw_response.create(model=EMBED_MODEL, input="one")
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    client.embeddings.create(model=EMBED_MODEL, input="two")
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model=EMBED_MODEL, input="three")
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["code"] == "requests_per_minute_exceeded"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"model": "smollm2-135m-instruct"}', 400, "messages"),
        (b'{"model": "smollm2-135m-instruct", "messages": [], "max_tokens": 5}', 400, "messages"),
        (
            b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}],'
            b' "temperature": 9}',
            400,
            "temperature",
        ),
        (
            b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}],'
            b' "max_tokens": 999999}',
            400,
            "max_tokens",
        ),
        (
            b'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "x"}],'
            b' "tools": [{"type": "code_interpreter"}]}',
            400,
            "tools",
        ),
        (
            b'{"model": "all-minilm-l6-v2", "messages": [{"role": "user", "content": "x"}]}',
            400,
            "model",
        ),
    ],
)
def test_bad_requests_get_clear_400s(
    live: LiveServer, body: bytes, status: int, param: str | None
) -> None:
    response = httpx.post(
        live.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {live.key}", "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param


def test_oversized_body_gets_413(live: LiveServer) -> None:
    big = b'{"model": "all-minilm-l6-v2", "input": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    response = httpx.post(
        live.base_url + "/embeddings",
        headers={"Authorization": f"Bearer {live.key}", "Content-Type": "application/json"},
        content=big,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_embedding_input_beyond_the_model_limit_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBED_MODEL, input="word " * 400)
    assert caught.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def test_request_id_is_echoed_and_logged_without_secrets(live: LiveServer, client: OpenAI) -> None:
    secret_prompt = "my-private-prompt-4711"
    response = httpx.post(
        live.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {live.key}", "X-Request-ID": "client-abc.1"},
        json={
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": secret_prompt}],
            "max_tokens": 4,
        },
        timeout=60,  # a loaded 2-core machine can take seconds for the first tokens
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "client-abc.1"
    logs = live.server.logs()
    assert "client-abc.1" in logs
    assert secret_prompt not in logs
    assert live.key not in logs


def test_operations_endpoints(live: LiveServer, client: OpenAI) -> None:
    client.embeddings.create(model=EMBED_MODEL, input="for the metrics")
    assert httpx.get(live.server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(live.server.url + "/readyz").json()
    assert ready["status"] == "ready" and EMBED_MODEL in ready["models"]
    metrics = httpx.get(live.server.url + "/metrics").text
    assert (
        'modelmint_model_requests_total{endpoint="embeddings",model="all-minilm-l6-v2",status="200"}'
        in metrics
    )
    assert "modelmint_model_request_seconds_bucket" in metrics
    assert 'modelmint_tokens_total{direction="input",model="all-minilm-l6-v2"}' in metrics


def test_admin_api_needs_the_admin_token(live: LiveServer) -> None:
    url = live.server.url + "/admin/organizations"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {live.key}"}).status_code == 401
    ok = httpx.get(url, headers={"Authorization": f"Bearer {live.server.admin_token}"})
    assert ok.status_code == 200 and "e2e-org" in {o["name"] for o in ok.json()}


def test_stream_cut_by_the_client_is_metered_for_what_was_sent(live: LiveServer) -> None:
    received = 0
    with httpx.stream(
        "POST",
        live.base_url + "/chat/completions",
        headers={"Authorization": f"Bearer {live.key}"},
        json={
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Write a long essay."}],
            "max_tokens": 400,
            "stream": True,
        },
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                received += 1
                if received == 5:
                    break  # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    row = None
    while row is None and time.monotonic() < deadline:
        row = live.usage_row(request_id)
        time.sleep(0.05)
    assert row is not None, "a cut stream left no usage record"
    assert row["finish_reason"] == "cancelled" and row["streamed"]
    # Tokens decoded after the last chunk we read but before the server saw the close are
    # metered too: the model produced them. Never fewer than the client received.
    assert received <= row["output_tokens"] < 400


def test_model_routes_answer_only_post_and_are_documented(live: LiveServer) -> None:
    wrong = httpx.get(live.base_url + "/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    document = httpx.get(live.server.url + "/openapi.json").json()
    for path, schema in (
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/v1/embeddings", "EmbeddingRequest"),
    ):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["$ref"] == f"#/components/schemas/{schema}"
        assert schema in document["components"]["schemas"]
    assert "/v1/models" in document["paths"] and "/admin/keys" in document["paths"]


def test_a_body_without_content_type_is_read_as_json(live: LiveServer) -> None:
    response = httpx.post(
        live.base_url + "/embeddings",
        headers={"Authorization": f"Bearer {live.key}"},
        content=b'{"model": "all-minilm-l6-v2", "input": "no content type"}',
    )
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 384
