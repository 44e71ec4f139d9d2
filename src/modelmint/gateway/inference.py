"""One paid request, from admission to a durable usage record.

    admit (rate limits) -> route (public name -> deployment, scope check) -> backend
    (with fallback) -> meter (group commit, before the answer completes) -> answer

Routes call one method here and only translate HTTP; nothing in this module
knows about FastAPI.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import orjson

from modelmint.accounts.keys import KeyInfo
from modelmint.errors import (
    BackendError,
    InvalidRequest,
    ModelMintError,
    ModelNotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from modelmint.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from modelmint.limits import RateLimiter, RateState
from modelmint.metering import UsageEvent, UsageWriter
from modelmint.observability.metrics import MODEL_LATENCY, MODEL_REQUESTS, TOKENS
from modelmint.registry.catalog import RouteSpec
from modelmint.serving.backend import EmbeddingBackend, TextBackend
from modelmint.serving.router import Router, Target
from modelmint.serving.types import StreamDelta, TextRequest, Usage
from modelmint.storage.db import utcnow

__all__ = ["Answer", "InferenceService"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures of a backend (not of the request) that a fallback deployment may absorb.
_FALLBACK_ON = (BackendError, UpstreamTimeout, ServiceUnavailable, UpstreamRateLimited)


@dataclass(slots=True)
class Answer:
    """What a route sends back: a JSON body, or an SSE byte stream; plus rate headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None


@dataclass(slots=True)
class _Call:
    """The bookkeeping of one request while it runs."""

    key: KeyInfo
    request_id: str
    public_name: str
    endpoint: str
    started: float
    target: Target | None = None


class InferenceService:
    def __init__(self, router: Router, writer: UsageWriter, limiter: RateLimiter) -> None:
        self.router = router
        self.writer = writer
        self.limiter = limiter

    # -- shared steps ------------------------------------------------------------------

    def _admit(self, key: KeyInfo, model: str, task: str) -> tuple[RouteSpec, RateState]:
        route = self.router.route(model)
        if not key.allows(model):
            raise PermissionDenied(f"this API key may not use the model {model!r}", param="model")
        if route.task != task:
            raise InvalidRequest(
                f"the model {model!r} is a {route.task} model; it does not serve this endpoint",
                param="model",
                code="model_not_supported",
            )
        return route, self.limiter.admit(key)

    async def _with_fallback(
        self, route: RouteSpec, call: _Call, run: Callable[[Target], Awaitable[T]]
    ) -> T:
        target = self.router.pick(route)
        call.target = target
        try:
            return await run(target)
        except _FALLBACK_ON as exc:
            fallback = target.deployment.fallback
            if fallback is None:
                raise
            try:
                backup_route = self.router.route(fallback)
            except ModelNotFound:
                raise exc from None  # a dangling fallback must not hide the real failure
            if backup_route.task != route.task:
                raise
            log.warning(
                "deployment failed, trying fallback",
                extra={"deployment": target.deployment.id, "fallback": fallback, "error": exc.code},
            )
            call.target = self.router.pick(backup_route)
            return await run(call.target)

    def _event(self, call: _Call, status: int, usage: Usage, **fields: Any) -> UsageEvent:
        deployment = call.target.deployment if call.target else None
        return UsageEvent(
            id=call.request_id,
            created_at=utcnow(),
            organization_id=call.key.organization_id,
            api_key_id=call.key.id,
            model=call.public_name,
            endpoint=call.endpoint,
            status_code=status,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            latency_ms=int((time.perf_counter() - call.started) * 1000),
            deployment_id=deployment.id if deployment else None,
            model_version_id=deployment.model_version_id if deployment else None,
            usage_estimated=usage.estimated,
            **fields,
        )

    def _observe(self, call: _Call, status: int, usage: Usage) -> None:
        MODEL_REQUESTS.labels(call.public_name, call.endpoint, str(status)).inc()
        MODEL_LATENCY.labels(call.public_name, call.endpoint).observe(
            time.perf_counter() - call.started
        )
        if usage.input_tokens:
            TOKENS.labels(call.public_name, "input").inc(usage.input_tokens)
        if usage.output_tokens:
            TOKENS.labels(call.public_name, "output").inc(usage.output_tokens)
        self.limiter.settle(call.key, usage.total_tokens)

    async def _fail(self, call: _Call, error: ModelMintError) -> None:
        """Record a request that reached a model but failed; the error goes to the client."""
        usage = Usage()
        self._observe(call, error.status_code, usage)
        # Not awaited: the failed request owes nothing, and its client should not wait.
        self.writer.submit(self._event(call, error.status_code, usage))

    # -- chat and completions -----------------------------------------------------------

    async def chat(self, key: KeyInfo, request_id: str, body: ChatCompletionRequest) -> Answer:
        extra = body.passthrough()
        if body.max_completion_tokens is not None:
            extra["max_completion_tokens"] = body.max_completion_tokens
        request = TextRequest(
            kind="chat",
            sampling=body.sampling(body.effective_max_tokens),
            messages=body.message_dicts(),
            extra=extra,
        )
        return await self._text(
            key,
            request_id,
            body.model,
            request,
            bool(body.stream),
            body.include_usage,
            "chat.completions",
        )

    async def completion(self, key: KeyInfo, request_id: str, body: CompletionRequest) -> Answer:
        request = TextRequest(
            kind="completion",
            sampling=body.sampling(body.max_tokens),
            prompt=body.prompt_text,
            extra=body.passthrough(),
        )
        return await self._text(
            key,
            request_id,
            body.model,
            request,
            bool(body.stream),
            body.include_usage,
            "completions",
        )

    async def _text(
        self,
        key: KeyInfo,
        request_id: str,
        model: str,
        request: TextRequest,
        stream: bool,
        include_usage: bool,
        endpoint: str,
    ) -> Answer:
        route, rate = self._admit(key, model, "chat")
        call = _Call(key, request_id, model, endpoint, time.perf_counter())
        envelope = _Envelope(request_id, model, request.kind)
        if stream:
            return Answer(
                rate.headers(),
                stream=await self._open_stream(route, call, request, envelope, include_usage),
            )
        try:
            generation = await self._with_fallback(
                route, call, lambda t: _text_backend(t).generate(request)
            )
        except ModelMintError as exc:
            await self._fail(call, exc)
            raise
        finish = generation.choices[0].get("finish_reason") if generation.choices else None
        # Durable before the client sees the answer: no answer goes out unmetered.
        await self.writer.record(self._event(call, 200, generation.usage, finish_reason=finish))
        self._observe(call, 200, generation.usage)
        return Answer(
            rate.headers(),
            body=envelope.full(generation.choices, generation.usage, generation.system_fingerprint),
        )

    async def _open_stream(
        self,
        route: RouteSpec,
        call: _Call,
        request: TextRequest,
        envelope: _Envelope,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        usage = Usage()

        async def first_piece(target: Target) -> tuple[AsyncIterator[StreamDelta], StreamDelta]:
            # A failed first attempt may have left counts or the estimate flag behind.
            usage.input_tokens = usage.output_tokens = 0
            usage.estimated = False
            pieces = _text_backend(target).stream(request, usage)
            try:
                return pieces, await anext(pieces)
            except StopAsyncIteration:
                return pieces, StreamDelta([])
            except BaseException:
                await pieces.aclose()  # type: ignore[attr-defined]
                raise

        # Errors before the first piece (bad params, context length, upstream down)
        # still become a normal HTTP error response.
        try:
            pieces, first = await self._with_fallback(route, call, first_piece)
        except ModelMintError as exc:
            await self._fail(call, exc)
            raise
        return self._sse(call, pieces, first, usage, envelope, include_usage)

    async def _sse(
        self,
        call: _Call,
        pieces: AsyncIterator[StreamDelta],
        first: StreamDelta,
        usage: Usage,
        envelope: _Envelope,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        recorded = False
        finish: str | None = None
        try:
            delta: StreamDelta | None = first
            while delta is not None:
                if delta.choices:
                    finish = delta.choices[-1].get("finish_reason") or finish
                    yield envelope.chunk(delta.choices, include_usage)
                try:
                    delta = await anext(pieces)
                except StopAsyncIteration:
                    delta = None
            await pieces.aclose()  # type: ignore[attr-defined]
            # Durable before the final chunk: a client that saw [DONE] was metered.
            await self.writer.record(
                self._event(call, 200, usage, streamed=True, finish_reason=finish)
            )
            recorded = True
            self._observe(call, 200, usage)
            if include_usage:
                yield envelope.usage_chunk(usage)
            yield b"data: [DONE]\n\n"
        except ModelMintError as exc:
            # The stream already started: tell the client in-band, charge what was sent.
            await pieces.aclose()  # type: ignore[attr-defined]
            self.writer.submit(self._event(call, 200, usage, streamed=True, finish_reason="error"))
            recorded = True
            self._observe(call, 200, usage)
            yield b"data: " + orjson.dumps(exc.to_body()) + b"\n\n"
        finally:
            if not recorded:
                # The client went away mid-stream. Meter what was produced; the write is
                # queued, not awaited, because this task is being cancelled.
                await _close_quietly(pieces)
                self.writer.submit(
                    self._event(call, 200, usage, streamed=True, finish_reason="cancelled")
                )
                self._observe(call, 200, usage)

    # -- embeddings ----------------------------------------------------------------------

    async def embeddings(self, key: KeyInfo, request_id: str, body: EmbeddingRequest) -> Answer:
        route, rate = self._admit(key, body.model, "embedding")
        call = _Call(key, request_id, body.model, "embeddings", time.perf_counter())
        texts = body.texts
        try:
            result = await self._with_fallback(
                route, call, lambda t: _embed_backend(t).embed(texts)
            )
        except ModelMintError as exc:
            await self._fail(call, exc)
            raise
        vectors = result.vectors
        if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
            error = InvalidRequest(
                f"this model returns {len(vectors[0])} dimensions; it cannot change that",
                param="dimensions",
            )
            await self._fail(call, error)
            raise error
        await self.writer.record(self._event(call, 200, result.usage))
        self._observe(call, 200, result.usage)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        usage = {
            "prompt_tokens": result.usage.input_tokens,
            "total_tokens": result.usage.input_tokens,
        }
        return Answer(
            rate.headers(),
            body={"object": "list", "data": data, "model": body.model, "usage": usage},
        )


class _Envelope:
    """The OpenAI envelope around backend choices: id, object, created, model."""

    def __init__(self, request_id: str, model: str, kind: str) -> None:
        chat = kind == "chat"
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id.removeprefix("req_")
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.model = model
        self.created = int(time.time())

    def full(
        self, choices: list[dict[str, Any]], usage: Usage, fingerprint: str | None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage.to_openai(),
            "system_fingerprint": fingerprint,
        }

    def chunk(self, choices: list[dict[str, Any]], include_usage: bool) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def usage_chunk(self, usage: Usage) -> bytes:
        payload = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_openai(),
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"


# The router checked, when it started each backend, that it can serve its deployment's
# task; admission checked the task. A Protocol isinstance check here would cost ~10 us.
def _text_backend(target: Target) -> TextBackend:
    return cast(TextBackend, target.backend)


def _embed_backend(target: Target) -> EmbeddingBackend:
    return cast(EmbeddingBackend, target.backend)


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 format: little-endian float32, as the SDK decodes it.
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector


async def _close_quietly(pieces: AsyncIterator[StreamDelta]) -> None:
    # Cancelled while closing: the backend's own finally still ran.
    with contextlib.suppress(BaseException):
        await pieces.aclose()  # type: ignore[attr-defined]
