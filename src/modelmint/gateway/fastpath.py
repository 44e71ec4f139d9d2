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
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from modelmint.errors import InvalidRequest, MethodNotAllowed, ModelMintError
from modelmint.gateway import demo_clock
from modelmint.gateway.deps import authenticate
from modelmint.gateway.errors import error_response, invalid_request, unexpected_error
from modelmint.gateway.inference import Answer, InferenceService
from modelmint.gateway.middleware import header
from modelmint.gateway.platform import Platform
from modelmint.gateway.protocol import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
    EmbeddingRequest,
    RecommendationRequest,
)
from modelmint.gateway.responses import EventStreamResponse, OrjsonResponse

__all__ = ["ModelRoutes", "openapi_paths"]

Handler = Callable[[InferenceService, Any, str, Any], Awaitable[Answer]]


async def _chat(service: InferenceService, key: Any, request_id: str, body: Any) -> Answer:
    return await service.chat(key, request_id, body)


async def _completion(service: InferenceService, key: Any, request_id: str, body: Any) -> Answer:
    return await service.completion(key, request_id, body)


async def _embeddings(service: InferenceService, key: Any, request_id: str, body: Any) -> Answer:
    return await service.embeddings(key, request_id, body)


async def _classify(service: InferenceService, key: Any, request_id: str, body: Any) -> Answer:
    return await service.classify(key, request_id, body)


async def _recommend(service: InferenceService, key: Any, request_id: str, body: Any) -> Answer:
    return await service.recommend(key, request_id, body)


ROUTES: dict[str, tuple[type[BaseModel], Handler, str]] = {
    "/v1/chat/completions": (ChatCompletionRequest, _chat, "Create a chat completion"),
    "/v1/completions": (CompletionRequest, _completion, "Create a text completion"),
    "/v1/embeddings": (EmbeddingRequest, _embeddings, "Create embeddings"),
    "/v1/classifications": (ClassificationRequest, _classify, "Classify inputs"),
    "/v1/recommendations": (RecommendationRequest, _recommend, "Recommend items to a user"),
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
        if scope["method"] != "POST":
            error = MethodNotAllowed(f"{scope['method']} is not allowed here; use POST")
            await error_response(error, {"Allow": "POST"})(scope, receive, send)
            return
        try:
            response = await self._answer(scope, receive, *route)
        except ModelMintError as exc:
            response = error_response(exc)
        except Exception as exc:
            response = unexpected_error(exc)
        await response(scope, receive, send)

    async def _answer(
        self, scope: Scope, receive: Receive, model: type[BaseModel], handler: Handler, _: str
    ) -> OrjsonResponse | EventStreamResponse:
        platform: Platform = scope["app"].state.platform
        state = scope["state"]
        peer = scope.get("client")
        client = str(peer[0]) if peer else None
        key = await authenticate(platform, header(scope, b"authorization"), client)
        state["organization_id"] = key.organization_id
        raw = await _read_body(receive)
        try:
            body: Any = model.model_validate_json(raw)
        except ValidationError as exc:
            raise invalid_request(exc.errors(include_url=False)) from None
        state["model"] = body.model
        if isinstance(body, EmbeddingRequest | ClassificationRequest):
            limit = platform.settings.max_embedding_inputs
            count = len(body.texts if isinstance(body, EmbeddingRequest) else body.items)
            if count > limit:
                raise InvalidRequest(f"at most {limit} inputs per request", param="input")
        at = await demo_clock.requested_time(platform, scope, key)
        if at is not None:
            # This request's own task: the value ends with it.
            demo_clock.usage_time.set(at)
        answer = await handler(platform.inference, key, state["request_id"], body)
        if at is not None:
            answer.headers[demo_clock.DEMO_TIME_HEADER] = at.isoformat()
        if answer.stream is not None:
            return EventStreamResponse(answer.stream, answer.headers)
        return OrjsonResponse(answer.body, headers=answer.headers)


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
    for path, (model, _, summary) in ROUTES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        paths[path] = {
            "post": {
                "tags": ["openai"],
                "summary": summary,
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
