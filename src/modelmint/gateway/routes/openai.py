"""OpenAI-compatible read routes. The paid POST routes are served by ``gateway.fastpath``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modelmint.errors import ModelNotFound
from modelmint.gateway.deps import CurrentKey
from modelmint.inference.service import Answer
from modelmint.platform import PlatformDep
from modelmint.web.responses import EventStreamResponse, OrjsonResponse

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
