"""OpenAI-compatible routes. Each parses, calls one service method, and formats."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from modelmint.errors import InvalidRequest, ModelNotFound
from modelmint.gateway.deps import CallerDep, CurrentKey, PlatformDep
from modelmint.gateway.inference import Answer
from modelmint.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from modelmint.gateway.responses import EventStreamResponse, OrjsonResponse

router = APIRouter(prefix="/v1", tags=["openai"])


def _respond(answer: Answer) -> OrjsonResponse | EventStreamResponse:
    if answer.stream is not None:
        return EventStreamResponse(answer.stream, answer.headers)
    return OrjsonResponse(answer.body, headers=answer.headers)


def _model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "modelmint"}


@router.get("/models")
async def list_models(key: CurrentKey, platform: PlatformDep) -> dict[str, Any]:
    routes = platform.router.routes
    data = [_model_card(n, r.created) for n, r in sorted(routes.items()) if key.allows(n)]
    return {"object": "list", "data": data}


@router.get("/models/{model:path}")
async def get_model(model: str, key: CurrentKey, platform: PlatformDep) -> dict[str, Any]:
    route = platform.router.routes.get(model)
    if route is None or not key.allows(model):
        raise ModelNotFound(f"the model {model!r} does not exist", param="model")
    return _model_card(model, route.created)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, caller: CallerDep, request: Request
) -> OrjsonResponse | EventStreamResponse:
    request.state.model = body.model
    return _respond(await caller.platform.inference.chat(caller.key, caller.request_id, body))


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, caller: CallerDep, request: Request
) -> OrjsonResponse | EventStreamResponse:
    request.state.model = body.model
    inference = caller.platform.inference
    return _respond(await inference.completion(caller.key, caller.request_id, body))


@router.post("/embeddings", response_model=None)
async def embeddings(
    body: EmbeddingRequest, caller: CallerDep, request: Request
) -> OrjsonResponse | EventStreamResponse:
    request.state.model = body.model
    limit = caller.platform.settings.max_embedding_inputs
    if len(body.texts) > limit:
        raise InvalidRequest(f"at most {limit} inputs per request", param="input")
    inference = caller.platform.inference
    return _respond(await inference.embeddings(caller.key, caller.request_id, body))
