"""One paid request, from admission to a durable usage record.

    route (public name -> deployment, scope check) -> admit (rate limits, then spend:
    plan, wallet reservation, free-tier cap) -> backend (with fallback) -> meter and
    charge (group commit, before the answer completes) -> answer

Routes call one method here and only translate HTTP; nothing in this module knows
about FastAPI. Every admitted request ends in exactly one ``_finish``: it releases the
rate-limit permit, counts the metrics, and writes (or queues) the usage record.

A request is metered now, or at the instant its caller passes as ``at``: a demo request
dated in the past (``demo.clock``). The instant travels with the request's own
bookkeeping, so no other request can see it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

from modelmint.accounts.keys import KeyInfo
from modelmint.billing import Metric
from modelmint.billing.errors import BudgetExceeded, InsufficientCredit, UsageCapExceeded
from modelmint.charging.admission import NO_HOLD, Bound, Hold, SpendGuard
from modelmint.charging.quantities import (
    bound_embedding,
    bound_prediction,
    bound_text,
    measured,
)
from modelmint.clock import utcnow
from modelmint.errors import (
    BackendError,
    InsufficientQuota,
    InvalidRequest,
    ModelMintError,
    ModelNotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from modelmint.feedback.samples import CapturedSample, SampleRecorder
from modelmint.inference.envelope import Envelope, encode_embedding
from modelmint.inference.inputs import decode_input, validated
from modelmint.inference.metered_stream import MeteredStream
from modelmint.inference.protocol import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    EmbeddingRequest,
    RecommendationRequest,
)
from modelmint.limits import Permit, RateLimiter
from modelmint.metering import UsageEvent, UsageWriter
from modelmint.observability.metrics import MODEL_LATENCY, MODEL_REQUESTS, TOKENS
from modelmint.registry.catalog import DeploymentSpec, RouteSpec
from modelmint.serving.backend import EmbeddingBackend, PredictionBackend, TextBackend
from modelmint.serving.router import Router, Target
from modelmint.serving.types import Prediction, StreamDelta, TextRequest, Usage

__all__ = ["Answer", "InferenceService"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures of a backend (not of the request) that a fallback deployment may absorb.
_FALLBACK_ON = (BackendError, UpstreamTimeout, ServiceUnavailable, UpstreamRateLimited)


@dataclass(slots=True)
class Answer:
    """What a route sends back: a JSON body or a metered event stream, plus rate headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    stream: MeteredStream | None = None


@dataclass(slots=True)
class _Call:
    """The bookkeeping of one admitted request while it runs."""

    key: KeyInfo
    request_id: str
    public_name: str
    endpoint: str
    permit: Permit
    started: float
    hold: Hold = NO_HOLD
    target: Target | None = None
    finished: bool = False
    at: datetime | None = None  # when to meter it; None: when it finishes


class InferenceService:
    def __init__(
        self,
        router: Router,
        writer: UsageWriter,
        limiter: RateLimiter,
        spend: SpendGuard | None = None,
        *,
        default_max_tokens: int = 4096,
        timeout_s: float = 60.0,
    ) -> None:
        self.router = router
        self.writer = writer
        self.limiter = limiter
        self.spend = spend
        self._default_max_tokens = default_max_tokens
        self._timeout_s = timeout_s
        # Admitted requests not yet finished, in this process.
        self.in_flight = 0
        # Opt-in sample capture (set by the app's lifespan); None: never captures.
        self.samples: SampleRecorder | None = None

    # -- shared steps ------------------------------------------------------------------

    async def _admit(
        self,
        key: KeyInfo,
        request_id: str,
        model: str,
        task: str,
        endpoint: str,
        bound: Bound,
        at: datetime | None,
    ) -> tuple[RouteSpec, _Call]:
        route = self.router.route(model)
        if not key.allows(model):
            raise PermissionDenied(f"this API key may not use the model {model!r}", param="model")
        if route.task != task:
            raise InvalidRequest(
                f"the model {model!r} is a {route.task} model; it does not serve this endpoint",
                param="model",
                code="model_not_supported",
            )
        try:
            permit = await self.limiter.admit(key, request_id)
        except ModelMintError as refusal:
            self.refused(key, request_id, model, endpoint, refusal.status_code, at)
            raise
        hold = NO_HOLD
        if self.spend is not None:
            try:
                hold = await self.spend.admit(key.organization_id, key.id, request_id, model, bound)
            except BaseException as exc:
                self.limiter.release(permit, 0)  # refused before any model work
                if isinstance(exc, ModelMintError):
                    self.refused(key, request_id, model, endpoint, exc.status_code, at)
                raise
        self.in_flight += 1
        started = time.perf_counter()
        return route, _Call(key, request_id, model, endpoint, permit, started, hold, at=at)

    def refused(
        self,
        key: KeyInfo,
        request_id: str,
        model: str,
        endpoint: str,
        status: int,
        at: datetime | None = None,
    ) -> None:
        """Record a request of ``key`` refused before any model work (no charge, no
        tokens), without waiting: the refusal is the answer, its record a courtesy."""
        self.writer.submit(
            UsageEvent(
                id=request_id,
                created_at=at or utcnow(),
                organization_id=key.organization_id,
                api_key_id=key.id,
                model=model,
                endpoint=endpoint,
                status_code=status,
                refused=True,
            )
        )

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
            created_at=call.at or utcnow(),
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
            engine_ms=usage.engine_ms,
            plan_code=call.hold.plan.code if call.hold.plan else None,
            plan_version=call.hold.plan.version if call.hold.plan else None,
            currency=call.hold.currency,
            reservation=call.hold.reservation,
            spend_hold=call.hold.spend_hold,
            spend_period=call.hold.spend_period.start if call.hold.spend_period else None,
            spend_scopes=call.hold.spend_scopes,
            wallet_lease=call.hold.wallet_lease,
            spend_leases=call.hold.spend_leases,
            lease_worst=call.hold.lease_worst,
            cost=_serving_cost(deployment, usage),
            **fields,
        )

    def _observe(self, call: _Call, status: int, usage: Usage) -> None:
        """Close the books of a request once: permit, metrics."""
        if call.finished:
            return
        call.finished = True
        self.in_flight -= 1
        self.limiter.release(call.permit, usage.total_tokens)
        if call.hold.units and self.spend is not None:
            used = (
                {}
                if status >= 400
                else measured(
                    call.endpoint, usage.input_tokens, usage.output_tokens, usage.engine_ms
                )
            )
            self.spend.finish(call.hold, used)
        MODEL_REQUESTS.labels(call.public_name, call.endpoint, str(status)).inc()
        MODEL_LATENCY.labels(call.public_name, call.endpoint).observe(
            time.perf_counter() - call.started
        )
        if usage.input_tokens:
            TOKENS.labels(call.public_name, "input").inc(usage.input_tokens)
        if usage.output_tokens:
            TOKENS.labels(call.public_name, "output").inc(usage.output_tokens)

    async def _succeed(self, call: _Call, usage: Usage, **fields: Any) -> None:
        """Meter an answer durably before it reaches the client: none goes out unmetered."""
        try:
            event = self._event(call, 200, usage, **fields)
            await self.writer.record(event, alone=self.in_flight == 1)
        except ModelMintError as exc:
            self._observe(call, exc.status_code, usage)
            raise
        finally:
            self._observe(call, 200, usage)

    def _queue(self, call: _Call, status: int, usage: Usage, **fields: Any) -> None:
        """Meter without waiting: failures owe nothing, and a gone client cannot wait."""
        self._observe(call, status, usage)
        self.writer.submit(self._event(call, status, usage, **fields))

    async def _guard(self, call: _Call, work: Awaitable[T]) -> T:
        """Run the model work; any failure is recorded with its status and re-raised."""
        try:
            return await work
        except ModelMintError as exc:
            self._queue(call, exc.status_code, Usage())
            raise
        except BaseException:
            self._queue(call, 500, Usage())
            raise

    def _captures(self, call: _Call) -> bool:
        samples = self.samples
        return samples is not None and samples.wants(call.key.organization_id, call.key.id)

    def _capture(self, call: _Call, request: Any, response: Any) -> None:
        """Queue a sample of an answered request if its caller opted in; never raises."""
        samples = self.samples
        if samples is None or not samples.wants(call.key.organization_id, call.key.id):
            return
        try:
            deployment = call.target.deployment if call.target else None
            samples.offer(
                CapturedSample(
                    request_id=call.request_id,
                    organization_id=call.key.organization_id,
                    api_key_id=call.key.id,
                    model=call.public_name,
                    model_version_id=deployment.model_version_id if deployment else None,
                    endpoint=call.endpoint,
                    request=request,
                    response=response,
                )
            )
        except Exception:
            log.exception("capturing a sample failed; the request is unaffected")

    # -- chat and completions -----------------------------------------------------------

    async def chat(
        self, key: KeyInfo, request_id: str, body: ChatCompletionRequest, at: datetime | None = None
    ) -> Answer:
        extra = body.passthrough()
        if body.max_completion_tokens is not None:
            extra["max_completion_tokens"] = body.max_completion_tokens
        request = TextRequest(
            kind="chat",
            sampling=body.sampling(body.effective_max_tokens),
            messages=body.message_dicts(),
            extra=extra,
        )
        return await self._text(key, request_id, body.model, request, body, "chat.completions", at)

    async def completion(
        self, key: KeyInfo, request_id: str, body: CompletionRequest, at: datetime | None = None
    ) -> Answer:
        request = TextRequest(
            kind="completion",
            sampling=body.sampling(body.max_tokens),
            prompt=body.prompt_text,
            extra=body.passthrough(),
        )
        return await self._text(key, request_id, body.model, request, body, "completions", at)

    async def _text(
        self,
        key: KeyInfo,
        request_id: str,
        model: str,
        request: TextRequest,
        body: ChatCompletionRequest | CompletionRequest,
        endpoint: str,
        at: datetime | None,
    ) -> Answer:
        try:
            route, call = await self._admit(
                key,
                request_id,
                model,
                "chat",
                endpoint,
                lambda: bound_text(
                    request, default_max_tokens=self._default_max_tokens, timeout_s=self._timeout_s
                ),
                at,
            )
        except (InsufficientCredit, BudgetExceeded, UsageCapExceeded) as refused:
            if request.sampling.max_tokens is None:
                _suggest_max_tokens(refused, self._default_max_tokens)
            raise
        envelope = Envelope(request_id, model, request.kind)
        if body.stream:
            stream = await self._guard(
                call, self._open_stream(route, call, request, envelope, body.include_usage)
            )
            return Answer(call.permit.headers(), stream=stream)
        generation = await self._guard(
            call,
            self._with_fallback(route, call, lambda t: _text_backend(t).generate(request)),
        )
        finish = generation.choices[0].get("finish_reason") if generation.choices else None
        await self._succeed(call, generation.usage, finish_reason=finish)
        self._capture(call, request.messages or request.prompt, generation.choices)
        return Answer(
            call.permit.headers(),
            body=envelope.full(generation.choices, generation.usage, generation.system_fingerprint),
        )

    async def _open_stream(
        self,
        route: RouteSpec,
        call: _Call,
        request: TextRequest,
        envelope: Envelope,
        include_usage: bool,
    ) -> MeteredStream:
        usage = Usage()

        async def first_piece(target: Target) -> tuple[AsyncIterator[StreamDelta], StreamDelta]:
            # A failed first attempt may have left counts or the estimate flag behind.
            usage.input_tokens = usage.output_tokens = 0
            usage.estimated = False
            pieces = _text_backend(target).stream(request, usage)
            try:
                return pieces, await anext(pieces, StreamDelta([]))
            except BaseException:
                await pieces.aclose()  # type: ignore[attr-defined]
                raise

        # Errors before the first piece (bad params, context length, upstream down) still
        # become a normal HTTP error response, and may fall back.
        pieces, first = await self._with_fallback(route, call, first_piece)

        async def record(final: Usage, finish: str | None) -> None:
            await self._succeed(call, final, streamed=True, finish_reason=finish)

        def record_later(final: Usage, reason: str) -> None:
            self._queue(call, 200, final, streamed=True, finish_reason=reason)

        def capture(choices: list[dict[str, Any]]) -> None:
            self._capture(call, request.messages or request.prompt, choices)

        return MeteredStream(
            pieces,
            first,
            usage,
            envelope,
            include_usage,
            record=record,
            record_later=record_later,
            capture=capture if self._captures(call) else None,
        )

    # -- embeddings ----------------------------------------------------------------------

    async def embeddings(
        self, key: KeyInfo, request_id: str, body: EmbeddingRequest, at: datetime | None = None
    ) -> Answer:
        texts = body.texts
        route, call = await self._admit(
            key,
            request_id,
            body.model,
            "embedding",
            "embeddings",
            lambda: bound_embedding(texts, timeout_s=self._timeout_s),
            at,
        )
        result = await self._guard(
            call, self._with_fallback(route, call, lambda t: _embed_backend(t).embed(texts))
        )
        vectors = result.vectors
        if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
            error = InvalidRequest(
                f"this model returns {len(vectors[0])} dimensions; it cannot change that",
                param="dimensions",
            )
            self._queue(call, error.status_code, Usage())
            raise error
        await self._succeed(call, result.usage)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": encode_embedding(v, body.encoding_format),
            }
            for i, v in enumerate(vectors)
        ]
        tokens = result.usage.input_tokens
        return Answer(
            call.permit.headers(),
            body={
                "object": "list",
                "data": data,
                "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    # -- classifiers and recommenders -----------------------------------------------------

    async def _predict(
        self,
        key: KeyInfo,
        request_id: str,
        model: str,
        task: str,
        items: list[Any],
        at: datetime | None,
    ) -> tuple[_Call, Prediction]:
        route, call = await self._admit(
            key,
            request_id,
            model,
            task,
            "classifications" if task == "classification" else "recommendations",
            lambda: bound_prediction(timeout_s=self._timeout_s),
            at,
        )

        async def run(target: Target) -> Prediction:
            backend = _predict_backend(target)
            # Every input is checked before any is queued: one bad row fails its own
            # request with a 400 naming it, never a batch shared with others.
            return await backend.predict(
                [validated(backend, item, i) for i, item in enumerate(items)]
            )

        prediction = await self._guard(call, self._with_fallback(route, call, run))
        await self._succeed(call, prediction.usage)
        return call, prediction

    async def classify(
        self, key: KeyInfo, request_id: str, body: ClassificationRequest, at: datetime | None = None
    ) -> Answer:
        items = [decode_input(item, i) for i, item in enumerate(body.items)]
        call, prediction = await self._predict(
            key, request_id, body.model, "classification", items, at
        )
        self._capture(call, items, prediction.results)
        data = [
            {"object": "classification", "index": i, **result}
            for i, result in enumerate(prediction.results)
        ]
        return Answer(
            call.permit.headers(),
            body={
                "object": "list",
                "id": request_id,
                "model": body.model,
                "data": data,
                "usage": {"input_items": len(items)},
            },
        )

    async def recommend(
        self, key: KeyInfo, request_id: str, body: RecommendationRequest, at: datetime | None = None
    ) -> Answer:
        item = {"user": body.user, "k": body.k, "exclude": list(body.exclude)}
        call, prediction = await self._predict(
            key, request_id, body.model, "recommendation", [item], at
        )
        self._capture(call, item, prediction.results[0])
        return Answer(
            call.permit.headers(),
            body={
                "object": "recommendation",
                "id": request_id,
                "model": body.model,
                **prediction.results[0],
                "usage": {"input_items": 1},
            },
        )


def _serving_cost(deployment: DeploymentSpec | None, usage: Usage) -> Decimal | None:
    if deployment is None or deployment.costs is None:
        return None
    return deployment.costs.of(usage.engine_ms, usage.input_tokens, usage.output_tokens)


# The router checked, when it started each backend, that it can serve its deployment's
# task; admission checked the task. A Protocol isinstance check here would cost ~10 us.
def _text_backend(target: Target) -> TextBackend:
    return cast(TextBackend, target.backend)


def _embed_backend(target: Target) -> EmbeddingBackend:
    return cast(EmbeddingBackend, target.backend)


def _predict_backend(target: Target) -> PredictionBackend:
    return cast(PredictionBackend, target.backend)


def _suggest_max_tokens(refused: InsufficientQuota, default_max_tokens: int) -> None:
    """Add to a 402 why a request without ``max_tokens`` cost so much at admission: its
    worst case assumed the default output length, which a small balance cannot cover."""
    if isinstance(refused, UsageCapExceeded) and refused.metric != Metric.OUTPUT_TOKENS.value:
        return  # the cap is on something max_tokens does not bound
    refused.message = (
        f"{refused.message.rstrip('.')}. The request sets no max_tokens, so its worst case "
        f"of {default_max_tokens} output tokens was reserved: set max_tokens to what the "
        "answer needs."
    )
    refused.args = (refused.message,)
    refused.param = refused.param or "max_tokens"
