"""Remote backend: any OpenAI-compatible upstream (vLLM, TGI, Ollama, llama.cpp server, OpenAI).

One pooled aiohttp session per deployment. Connect errors and 5xx answers are
retried with exponential backoff, but only before the first byte of an answer
has reached our client: a half-sent stream is never replayed. A read timeout is
not retried: the upstream may still be working (and billing) on the request, and
each retry would add another full timeout before the client hears anything.
Streams ask the upstream for a final usage chunk; when none comes, usage is
counted with our tokenizer and marked estimated.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp.http_exceptions import LineTooLong

from modelmint.errors import (
    BackendError,
    InvalidRequest,
    ModelMintError,
    ServiceUnavailable,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from modelmint.serving.token_estimate import estimate_tokens
from modelmint.serving.types import EmbeddingResult, Generation, StreamDelta, TextRequest, Usage

__all__ = ["RemoteOpenAIBackend", "RemoteSettings"]

# One server-sent event may be long (a whole tool call, logprobs); aiohttp's default
# line limit (512 KiB) would fail such a stream with an error outside our tree.
_MAX_EVENT_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RemoteSettings:
    base_url: str
    upstream_model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_retries: int = 2
    # First backoff delay; doubles on each retry.
    backoff_s: float = 0.1


class _Retryable(Exception):
    def __init__(self, error: ModelMintError) -> None:
        self.error = error


class RemoteOpenAIBackend:
    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout_s,
            sock_read=self.settings.timeout_s,
        )
        # No per-host cap: the gateway's own limits decide concurrency, not the pool.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- request building ------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        env = self.settings.api_key_env
        if env:
            secret = os.environ.get(env)
            if not secret:
                raise ServiceUnavailable(
                    f"upstream API key variable {env} is not set in the gateway's environment"
                )
            headers["Authorization"] = f"Bearer {secret}"
        return headers

    def _body(self, request: TextRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = dict(request.extra)
        body["model"] = self.settings.upstream_model
        s = request.sampling
        if request.kind == "chat":
            body["messages"] = request.messages
        else:
            body["prompt"] = request.prompt
        # A client that sent max_completion_tokens gets it forwarded as such (newer
        # OpenAI models refuse max_tokens); otherwise the classic field.
        if s.max_tokens is not None and "max_completion_tokens" not in body:
            body["max_tokens"] = s.max_tokens
        body["temperature"] = s.temperature
        body["top_p"] = s.top_p
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _url(self, kind: str) -> str:
        path = {"chat": "/chat/completions", "completion": "/completions"}.get(kind, "/embeddings")
        return self.settings.base_url.rstrip("/") + path

    async def _post(self, url: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST with retries; returns a 2xx response whose body is still unread."""
        if self._session is None:
            raise ServiceUnavailable("upstream client is not started")
        headers = self._headers()
        # Bytes, not json=: aiohttp's JSON payload re-encodes and costs more per request.
        try:
            payload = orjson.dumps(body)
        except TypeError as exc:  # JSON allows any integer; OpenAI servers take 64 bits
            raise InvalidRequest(f"the request cannot be forwarded: {exc}") from None
        delay = self.settings.backoff_s
        # Made only when an attempt fails: an error object costs a few microseconds, and
        # nearly every request succeeds at the first attempt.
        last: ModelMintError | None = None
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                await asyncio.sleep(delay)
                delay *= 2
            try:
                response = await self._session.post(url, data=payload, headers=headers)
            except aiohttp.ConnectionTimeoutError:
                last = UpstreamTimeout("could not connect to the upstream in time")
                continue
            except TimeoutError as exc:
                raise UpstreamTimeout("upstream did not answer in time") from exc
            except aiohttp.ClientError as exc:
                last = BackendError(f"cannot reach the upstream: {type(exc).__name__}")
                continue
            if response.status < 400:
                return response
            try:
                await self._raise_for(response)
            except _Retryable as retry:
                last = retry.error
                continue
        raise last or BackendError("upstream failed")

    async def _raise_for(self, response: aiohttp.ClientResponse) -> None:
        try:
            detail = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            detail = b""
        finally:
            response.release()
        message = _upstream_message(detail) or f"upstream answered HTTP {response.status}"
        status = response.status
        if status >= 500:
            raise _Retryable(BackendError(f"upstream error: {message}"))
        if status == 429:
            retry_after = _float(response.headers.get("Retry-After")) or 1.0
            raise UpstreamRateLimited(
                f"upstream is rate limited: {message}", retry_after=retry_after
            )
        if status in (400, 404, 422):
            raise InvalidRequest(f"upstream refused the request: {message}")
        # 401/403 and the rest mean our configuration is wrong, not the client's request.
        raise BackendError(f"upstream answered HTTP {status}: {message}")

    # -- chat and completions -----------------------------------------------------------

    async def generate(self, request: TextRequest) -> Generation:
        response = await self._post(self._url(request.kind), self._body(request, stream=False))
        try:
            payload = orjson.loads(await response.read())
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream did not finish its answer in time") from exc
        except (aiohttp.ClientError, orjson.JSONDecodeError) as exc:
            raise BackendError(f"upstream sent an unreadable answer: {type(exc).__name__}") from exc
        finally:
            response.release()
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list):
            raise BackendError("upstream answer has no choices")
        usage = _usage_of(payload.get("usage"))
        if usage is None:
            usage = Usage(
                input_tokens=self._estimate_prompt(request),
                output_tokens=sum(estimate_tokens(_choice_text(c)) for c in choices),
                estimated=True,
            )
        return Generation(choices, usage, payload.get("system_fingerprint"))

    async def stream(self, request: TextRequest, usage: Usage) -> AsyncIterator[StreamDelta]:
        response = await self._post(self._url(request.kind), self._body(request, stream=True))
        produced: list[str] = []
        reported = False
        try:
            async for chunk in _sse_events(response):
                reported_usage = _usage_of(chunk.get("usage"))
                if reported_usage is not None:
                    usage.input_tokens = reported_usage.input_tokens
                    usage.output_tokens = reported_usage.output_tokens
                    usage.estimated = False
                    reported = True
                choices = chunk.get("choices") or []
                if choices:
                    text = "".join(_choice_text(c) for c in choices)
                    produced.append(text)
                    if not reported and text:
                        # Keep a running count current mid-stream without running the
                        # tokenizer per chunk on the event loop (~60 us each): upstreams
                        # send about a token a chunk. The tokenizer recounts once at the end.
                        usage.estimated = True
                        usage.output_tokens += 1
                    yield StreamDelta(choices)
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream stopped sending in the middle of the answer") from exc
        except aiohttp.ClientError as exc:
            raise BackendError(f"upstream stream broke: {type(exc).__name__}") from exc
        finally:
            response.release()
            if not reported:
                usage.estimated = True
                usage.input_tokens = self._estimate_prompt(request)
                usage.output_tokens = estimate_tokens("".join(produced))

    def _estimate_prompt(self, request: TextRequest) -> int:
        if request.kind == "chat":
            return sum(estimate_tokens(_readable_text(m)) for m in request.messages)
        return estimate_tokens(request.prompt)

    # -- embeddings ------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        body = {"model": self.settings.upstream_model, "input": texts, "encoding_format": "float"}
        response = await self._post(self._url("embedding"), body)
        try:
            payload = orjson.loads(await response.read())
            data = sorted(payload.get("data", []), key=lambda d: d.get("index", 0))
            vectors = [list(d["embedding"]) for d in data]
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream did not finish its answer in time") from exc
        except (
            aiohttp.ClientError,
            orjson.JSONDecodeError,
            AttributeError,
            KeyError,
            TypeError,
        ) as exc:
            raise BackendError("upstream sent an unreadable embeddings answer") from exc
        finally:
            response.release()
        if len(vectors) != len(texts):
            raise BackendError("upstream returned a different number of embeddings")
        usage = _usage_of(payload.get("usage"))
        if usage is None:
            usage = Usage(input_tokens=sum(estimate_tokens(t) for t in texts), estimated=True)
        return EmbeddingResult(vectors, usage)


async def _sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of an OpenAI-style server-sent event stream, up to ``[DONE]``."""
    while True:
        try:
            line = await response.content.readline(max_line_length=_MAX_EVENT_BYTES)
        except LineTooLong as exc:
            raise BackendError("upstream sent a stream event larger than 16 MiB") from exc
        if not line:  # end of the body
            return
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BackendError("upstream sent a malformed stream event") from exc
        if isinstance(event, dict):
            if "error" in event and not event.get("choices"):
                raise BackendError(f"upstream error in stream: {_upstream_message(data)}")
            yield event


def _usage_of(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return Usage(input_tokens=prompt, output_tokens=completion or 0)


def _readable_text(message: dict[str, Any]) -> str:
    """The text parts of a message. Unlike a local engine we do not refuse other parts
    (images, audio): the upstream took them, we can only estimate what we can read."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text"
    )


def _choice_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return str(choice.get("text") or "")
    part = choice.get("delta") or choice.get("message") or {}
    return str(part.get("content") or "")


def _upstream_message(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode(errors="replace")
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:500]
        if isinstance(error, str):
            return error[:500]
    return ""


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
