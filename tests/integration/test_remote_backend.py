"""RemoteOpenAIBackend against a real OpenAI-compatible upstream over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from modelmint.errors import (
    BackendError,
    InvalidRequest,
    ModelMintError,
    RateLimited,
    ServiceUnavailable,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from modelmint.serving.remote import RemoteOpenAIBackend, RemoteSettings
from modelmint.serving.token_estimate import estimate_tokens
from modelmint.serving.types import SamplingParams, StreamDelta, TextRequest, Usage
from tests.support.mock_upstream import MockUpstream, embedding_of

REPLY = "The quick brown fox jumps over the lazy dog."
QUESTION = "Which animal jumps over the dog?"
CHAT = TextRequest(
    kind="chat",
    sampling=SamplingParams(max_tokens=32, temperature=0.0),
    messages=[{"role": "user", "content": QUESTION}],
)
COMPLETION = TextRequest(kind="completion", sampling=SamplingParams(), prompt=QUESTION)


@pytest.fixture
async def upstream() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(reply=REPLY) as mock:
        yield mock


@asynccontextmanager
async def remote(upstream: MockUpstream, **overrides: Any) -> AsyncIterator[RemoteOpenAIBackend]:
    options: dict[str, Any] = {"backoff_s": 0.01, "max_retries": 2, **overrides}
    backend = RemoteOpenAIBackend(
        RemoteSettings(base_url=upstream.base_url, upstream_model="mock-model", **options)
    )
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


async def collect(
    backend: RemoteOpenAIBackend, request: TextRequest, usage: Usage
) -> list[StreamDelta]:
    return [delta async for delta in backend.stream(request, usage)]


def chat_text(deltas: list[StreamDelta]) -> str:
    return "".join(c["delta"].get("content") or "" for d in deltas for c in d.choices)


# -- retries and error mapping -------------------------------------------------------------


async def test_server_errors_are_retried_until_the_upstream_answers(
    upstream: MockUpstream,
) -> None:
    upstream.fail_next(2, status=500)
    async with remote(upstream, max_retries=2) as backend:
        generation = await backend.generate(CHAT)
    assert generation.choices[0]["message"]["content"] == REPLY
    assert len(upstream.requests) == 3


async def test_a_reset_connection_is_retried(upstream: MockUpstream) -> None:
    upstream.reset_next(1)
    async with remote(upstream, max_retries=1) as backend:
        generation = await backend.generate(CHAT)
    assert generation.choices[0]["message"]["content"] == REPLY
    assert len(upstream.requests) == 2


async def test_exhausted_retries_raise_a_502_backend_error(upstream: MockUpstream) -> None:
    upstream.fail_next(3, status=503)
    async with remote(upstream, max_retries=2) as backend:
        with pytest.raises(BackendError) as caught:
            await backend.generate(CHAT)
    assert caught.value.status_code == 502
    assert "mock upstream failure 503" in caught.value.message
    assert len(upstream.requests) == 3


async def test_a_stream_is_retried_before_its_first_byte(upstream: MockUpstream) -> None:
    upstream.fail_next(1, status=502)
    usage = Usage()
    async with remote(upstream) as backend:
        deltas = await collect(backend, CHAT, usage)
    assert chat_text(deltas) == REPLY
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (400, InvalidRequest, 400),
        (404, InvalidRequest, 400),
        (422, InvalidRequest, 400),
        (401, BackendError, 502),  # our upstream key is wrong: not the client's fault
        (403, BackendError, 502),
        (409, BackendError, 502),
    ],
)
async def test_client_errors_are_mapped_and_not_retried(
    upstream: MockUpstream, status: int, error: type[ModelMintError], code: int
) -> None:
    upstream.fail_next(1, status=status)
    async with remote(upstream, max_retries=2) as backend:
        with pytest.raises(ModelMintError) as caught:
            await backend.generate(CHAT)
    assert type(caught.value) is error
    assert caught.value.status_code == code
    assert f"mock upstream failure {status}" in caught.value.message
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (None, 1.0)])
async def test_upstream_429_is_rate_limited_with_retry_after(
    upstream: MockUpstream, header: str | None, seconds: float
) -> None:
    upstream.fail_next(1, status=429, retry_after=header)
    async with remote(upstream) as backend:
        with pytest.raises(RateLimited) as caught:
            await backend.generate(CHAT)
    assert caught.value.status_code == 429
    assert caught.value.retry_after == seconds
    assert len(upstream.requests) == 1


async def test_a_silent_upstream_times_out_without_being_asked_again(
    upstream: MockUpstream,
) -> None:
    upstream.delay_s = 30.0  # held until the fixture releases it
    async with remote(upstream, timeout_s=0.5, max_retries=2) as backend:
        call = asyncio.create_task(backend.generate(CHAT))
        await upstream.wait_for_requests(1)
        assert not call.done()  # the request arrived and the upstream sits on it
        with pytest.raises(UpstreamTimeout) as caught:
            await call
    assert caught.value.status_code == 504
    # A read timeout is not a connect error: the upstream may still be working on it.
    assert len(upstream.requests) == 1


async def test_an_answer_that_is_not_openai_json_is_a_backend_error(
    upstream: MockUpstream,
) -> None:
    upstream.garble_next(2)
    async with remote(upstream) as backend:
        with pytest.raises(BackendError, match="upstream answer has no choices"):
            await backend.generate(CHAT)
        with pytest.raises(BackendError, match="unreadable embeddings answer"):
            await backend.embed(["one"])
    assert len(upstream.requests) == 2  # a 200 is final, even a garbled one


async def test_an_unreachable_upstream_is_a_backend_error(upstream: MockUpstream) -> None:
    port = upstream.port
    await upstream.close()  # nothing listens on the port any more
    backend = RemoteOpenAIBackend(
        RemoteSettings(base_url=f"http://127.0.0.1:{port}/v1", upstream_model="m", backoff_s=0.01)
    )
    await backend.start()
    try:
        with pytest.raises(BackendError, match="cannot reach the upstream"):
            await backend.generate(CHAT)
    finally:
        await backend.close()


# -- usage ---------------------------------------------------------------------------------


async def test_generate_takes_usage_from_the_upstream(upstream: MockUpstream) -> None:
    async with remote(upstream) as backend:
        generation = await backend.generate(CHAT)
    assert generation.usage == Usage(input_tokens=13, output_tokens=9, estimated=False)
    assert generation.choices == [
        {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}
    ]
    assert generation.system_fingerprint == "fp_mock"


async def test_stream_takes_usage_from_the_final_chunk(upstream: MockUpstream) -> None:
    usage = Usage()
    async with remote(upstream) as backend:
        deltas = await collect(backend, CHAT, usage)
    assert chat_text(deltas) == REPLY
    assert deltas[-1].choices == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage == Usage(input_tokens=13, output_tokens=9, estimated=False)
    sent = upstream.requests[0].body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


async def test_completions_stream_and_generate(upstream: MockUpstream) -> None:
    usage = Usage()
    async with remote(upstream) as backend:
        generation = await backend.generate(COMPLETION)
        deltas = await collect(backend, COMPLETION, usage)
    assert generation.choices[0]["text"] == REPLY
    assert generation.usage == Usage(13, 9)
    assert "".join(c["text"] for d in deltas for c in d.choices) == REPLY
    assert usage == Usage(13, 9)
    assert [r.path for r in upstream.requests] == ["/v1/completions", "/v1/completions"]
    assert upstream.requests[1].body["prompt"] == QUESTION


async def test_without_upstream_usage_generate_estimates(upstream: MockUpstream) -> None:
    upstream.omit_usage = True
    async with remote(upstream) as backend:
        generation = await backend.generate(CHAT)
    assert generation.usage.estimated is True
    assert generation.usage.input_tokens == estimate_tokens(QUESTION) > 0
    assert generation.usage.output_tokens == estimate_tokens(REPLY) > 0


async def test_without_upstream_usage_a_stream_estimates(upstream: MockUpstream) -> None:
    upstream.omit_usage = True
    usage = Usage()
    async with remote(upstream) as backend:
        deltas = await collect(backend, CHAT, usage)
    assert chat_text(deltas) == REPLY
    assert usage == Usage(estimate_tokens(QUESTION), estimate_tokens(REPLY), estimated=True)
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0


async def test_without_upstream_usage_the_count_stays_current_mid_stream(
    upstream: MockUpstream,
) -> None:
    upstream.omit_usage = True
    usage = Usage()
    seen: list[tuple[int, bool]] = []
    async with remote(upstream) as backend:
        async for delta in backend.stream(CHAT, usage):
            if chat_text([delta]):
                seen.append((usage.output_tokens, usage.estimated))
    # One per content chunk while streaming; the tokenizer's count once it ends.
    assert seen == [(n, True) for n in range(1, 10)]
    assert usage.output_tokens == estimate_tokens(REPLY)


async def test_estimating_a_prompt_with_image_parts_counts_its_text(
    upstream: MockUpstream,
) -> None:
    # A vision upstream takes image parts; our estimate counts the text it can read.
    upstream.omit_usage = True
    parts = [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    request = TextRequest(
        kind="chat", sampling=SamplingParams(), messages=[{"role": "user", "content": parts}]
    )
    usage = Usage()
    async with remote(upstream) as backend:
        generation = await backend.generate(request)
        await collect(backend, request, usage)
    assert generation.usage == Usage(estimate_tokens(QUESTION), estimate_tokens(REPLY), True)
    assert usage == Usage(estimate_tokens(QUESTION), estimate_tokens(REPLY), True)


async def test_a_stream_cut_midway_raises_and_meters_what_was_sent(
    upstream: MockUpstream,
) -> None:
    upstream.cut_stream_after = 3  # "The quick brown " then the connection drops
    usage = Usage()
    deltas: list[StreamDelta] = []
    async with remote(upstream) as backend:
        with pytest.raises(BackendError, match="upstream stream broke"):
            async for delta in backend.stream(CHAT, usage):
                deltas.append(delta)
    assert chat_text(deltas) == "The quick brown "
    assert usage == Usage(
        estimate_tokens(QUESTION), estimate_tokens("The quick brown "), estimated=True
    )
    assert len(upstream.requests) == 1  # a started stream is never replayed


async def test_a_stream_that_stalls_midway_times_out(upstream: MockUpstream) -> None:
    upstream.cut_stream_after = 2
    upstream.cut_by = "stall"  # held until the fixture closes the upstream
    usage = Usage()
    deltas: list[StreamDelta] = []
    async with remote(upstream, timeout_s=0.3) as backend:
        with pytest.raises(UpstreamTimeout):
            async for delta in backend.stream(CHAT, usage):
                deltas.append(delta)
    assert chat_text(deltas) == "The quick "
    assert usage == Usage(estimate_tokens(QUESTION), estimate_tokens("The quick "), True)


async def test_a_stream_event_larger_than_the_default_line_limit_passes(
    upstream: MockUpstream,
) -> None:
    # aiohttp's readline refuses lines over 512 KiB; a long tool-call argument is one line.
    upstream.reply = "x" * 600_000 + " end"
    usage = Usage()
    async with remote(upstream) as backend:
        deltas = await collect(backend, CHAT, usage)
    assert chat_text(deltas) == upstream.reply
    assert usage == Usage(13, 9)


# -- what is sent --------------------------------------------------------------------------


async def test_a_missing_key_variable_is_service_unavailable(
    upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELMINT_TEST_ABSENT_KEY", raising=False)
    async with remote(upstream, api_key_env="MODELMINT_TEST_ABSENT_KEY") as backend:
        with pytest.raises(ServiceUnavailable, match="MODELMINT_TEST_ABSENT_KEY") as caught:
            await backend.generate(CHAT)
    assert caught.value.status_code == 503
    assert upstream.requests == []


async def test_the_key_from_the_environment_is_sent_as_bearer(
    upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELMINT_TEST_UPSTREAM_KEY", "sk-upstream-secret")
    async with remote(upstream, api_key_env="MODELMINT_TEST_UPSTREAM_KEY") as backend:
        await backend.generate(CHAT)
        await collect(backend, CHAT, Usage())
    assert [r.headers["authorization"] for r in upstream.requests] == [
        "Bearer sk-upstream-secret",
        "Bearer sk-upstream-secret",
    ]


async def test_without_a_key_variable_no_authorization_is_sent(upstream: MockUpstream) -> None:
    async with remote(upstream) as backend:
        await backend.generate(CHAT)
    assert "authorization" not in upstream.requests[0].headers


async def test_openai_fields_we_do_not_interpret_reach_the_upstream(
    upstream: MockUpstream,
) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    extra = {
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "user": "customer-42",
        "n": 2,
    }
    request = TextRequest(
        kind="chat",
        sampling=SamplingParams(max_tokens=50, temperature=0.2, top_p=0.9, stop=("END",), seed=7),
        messages=[{"role": "user", "content": QUESTION}],
        extra=extra,
    )
    async with remote(upstream) as backend:
        await backend.generate(request)
    assert upstream.requests[0].path == "/v1/chat/completions"
    assert upstream.requests[0].body == {
        **extra,
        "model": "mock-model",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "stream": False,
    }


async def test_a_base_url_with_a_trailing_slash_still_works(upstream: MockUpstream) -> None:
    backend = RemoteOpenAIBackend(
        RemoteSettings(base_url=upstream.base_url + "/", upstream_model="mock-model")
    )
    await backend.start()
    try:
        await backend.generate(CHAT)
    finally:
        await backend.close()
    assert upstream.requests[0].path == "/v1/chat/completions"


# -- embeddings ----------------------------------------------------------------------------


async def test_embeddings_return_vectors_in_order_with_upstream_usage(
    upstream: MockUpstream,
) -> None:
    texts = ["first text", "second", "a third one"]
    async with remote(upstream) as backend:
        result = await backend.embed(texts)
    assert result.vectors == [embedding_of(t, i) for i, t in enumerate(texts)]
    assert result.usage == Usage(input_tokens=13, output_tokens=0, estimated=False)
    assert upstream.requests[0].path == "/v1/embeddings"
    assert upstream.requests[0].body == {
        "model": "mock-model",
        "input": texts,
        "encoding_format": "float",
    }


async def test_embeddings_without_usage_are_estimated(upstream: MockUpstream) -> None:
    upstream.omit_usage = True
    texts = ["first text", "second"]
    async with remote(upstream) as backend:
        result = await backend.embed(texts)
    expected = estimate_tokens("first text") + estimate_tokens("second")
    assert result.usage == Usage(input_tokens=expected, estimated=True)
    assert expected > 0


async def test_embeddings_retry_server_errors(upstream: MockUpstream) -> None:
    upstream.fail_next(1, status=500)
    async with remote(upstream) as backend:
        result = await backend.embed(["one"])
    assert result.vectors == [embedding_of("one", 0)]
    assert len(upstream.requests) == 2


async def test_max_completion_tokens_is_forwarded_instead_of_max_tokens(
    upstream: MockUpstream,
) -> None:
    request = TextRequest(
        kind="chat",
        sampling=SamplingParams(max_tokens=20),
        messages=[{"role": "user", "content": QUESTION}],
        extra={"max_completion_tokens": 20},
    )
    async with remote(upstream) as backend:
        await backend.generate(request)
        await backend.generate(CHAT)
    first, second = (r.body for r in upstream.requests)
    assert first["max_completion_tokens"] == 20 and "max_tokens" not in first
    assert second["max_tokens"] == 32 and "max_completion_tokens" not in second


async def test_an_upstream_429_is_reported_as_the_upstreams_limit(upstream: MockUpstream) -> None:
    upstream.fail_next(1, status=429, retry_after="7")
    async with remote(upstream) as backend:
        with pytest.raises(UpstreamRateLimited) as caught:
            await backend.generate(CHAT)
    assert caught.value.code == "upstream_rate_limited" and caught.value.retry_after == 7
