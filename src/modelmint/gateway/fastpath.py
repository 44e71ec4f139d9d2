"""The paid model routes, served straight from ASGI.

``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/classifications`` and ``/v1/recommendations`` carry all the paying traffic.
FastAPI's routing, dependency solving and body handling cost more CPU per request
than everything ModelMint itself does for one (measured with py-spy: about 45 % of
a worker), so these are answered here, before FastAPI:
read the body, validate it with the same pydantic models, authenticate, call the
inference service, send. Errors take the same OpenAI shape as everywhere else. The
OpenAPI document still describes them (``openapi_paths``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from modelmint.demo.names import DEMO_TIME_HEADER
from modelmint.errors import InvalidRequest, MethodNotAllowed, ModelMintError
from modelmint.gateway.deps import known_key, refusal_of
from modelmint.inference.protocol import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    EmbeddingRequest,
    RecommendationRequest,
)
from modelmint.inference.service import Answer, InferenceService
from modelmint.platform import Platform
from modelmint.web.errors import error_response, invalid_request, unexpected_error
from modelmint.web.middleware import header
from modelmint.web.responses import EventStreamResponse, OrjsonResponse

__all__ = ["ModelRoute", "ModelRoutes", "openapi_paths"]

# An ``InferenceService`` method, unbound: (service, key, request id, body, when to meter
# it: None for now) -> answer.
Handler = Callable[[InferenceService, Any, str, Any, datetime | None], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """One model route. Like the route a router matched, it is put in the scope as
    ``scope["route"]``, so the HTTP metrics label the request with its ``path``."""

    path: str
    body: type[BaseModel]
    handler: Handler
    summary: str
    endpoint: str  # as usage records name it


ROUTES: dict[str, ModelRoute] = {
    route.path: route
    for route in (
        ModelRoute(
            "/v1/chat/completions",
            ChatCompletionRequest,
            InferenceService.chat,
            "Create a chat completion",
            "chat.completions",
        ),
        ModelRoute(
            "/v1/completions",
            CompletionRequest,
            InferenceService.completion,
            "Create a text completion",
            "completions",
        ),
        ModelRoute(
            "/v1/embeddings",
            EmbeddingRequest,
            InferenceService.embeddings,
            "Create embeddings",
            "embeddings",
        ),
        ModelRoute(
            "/v1/classifications",
            ClassificationRequest,
            InferenceService.classify,
            "Classify inputs",
            "classifications",
        ),
        ModelRoute(
            "/v1/recommendations",
            RecommendationRequest,
            InferenceService.recommend,
            "Recommend items to a user",
            "recommendations",
        ),
    )
}


class ModelRoutes:
    """ASGI middleware answering the model routes; everything else goes on to FastAPI."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        if scope["method"] != "POST":
            error = MethodNotAllowed(f"{scope['method']} is not allowed here; use POST")
            await error_response(error, {"Allow": "POST"})(scope, receive, send)
            return
        try:
            response = await self._answer(scope, receive, route)
        except ModelMintError as exc:
            response = error_response(exc)
        except Exception as exc:
            response = unexpected_error(exc)
        await response(scope, receive, send)

    async def _answer(
        self, scope: Scope, receive: Receive, route: ModelRoute
    ) -> OrjsonResponse | EventStreamResponse:
        platform: Platform = scope["app"].state.platform
        state = scope["state"]
        peer = scope.get("client")
        client = str(peer[0]) if peer else None
        key = await known_key(platform, header(scope, b"authorization"), client)
        state["organization_id"] = key.organization_id
        raw = await _read_body(receive)
        refusal = refusal_of(key)
        if refusal is not None:
            # A known key: its organisation sees the refusal, unless the key was revoked
            # (as every key of an erased organisation is: nothing more is kept of it).
            if not key.revoked:
                platform.inference.refused(
                    key, state["request_id"], _model_named(raw), route.endpoint,
                    refusal.status_code,
                )  # fmt: skip
            raise refusal
        try:
            body: Any = route.body.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(exc.errors(include_url=False)) from None
        state["model"] = body.model
        if isinstance(body, EmbeddingRequest | ClassificationRequest):
            limit = platform.settings.max_embedding_inputs
            count = len(body.texts if isinstance(body, EmbeddingRequest) else body.items)
            if count > limit:
                raise InvalidRequest(f"at most {limit} inputs per request", param="input")
        # Resolved once, and handed to the service with this request alone.
        at = await platform.demo_clock.requested_time(scope, key)
        answer = await route.handler(platform.inference, key, state["request_id"], body, at)
        if at is not None:
            answer.headers[DEMO_TIME_HEADER] = at.isoformat()
        if answer.stream is not None:
            return EventStreamResponse(answer.stream, answer.headers)
        return OrjsonResponse(answer.body, headers=answer.headers)


def _model_named(raw: bytes) -> str:
    """The ``model`` a request body names, if it names one ("" otherwise)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    model = body.get("model") if isinstance(body, dict) else None
    return model[:200] if isinstance(model, str) else ""


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client went away before sending its request")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def openapi_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """OpenAPI path items and component schemas for the model routes."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for path, route in ROUTES.items():
        model = route.body
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        paths[path] = {
            "post": {
                "tags": ["openai"],
                "summary": route.summary,
                "operationId": path.strip("/").replace("/", "_"),
                "security": [{"APIKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The answer; `text/event-stream` when `stream` is true",
                        "content": {"application/json": {}, "text/event-stream": {}},
                    },
                    **{
                        str(code): {"$ref": "#/components/responses/Error"}
                        for code in (400, 401, 402, 403, 404, 413, 429, 502, 503, 504)
                    },
                },
            }
        }
    return paths, schemas
