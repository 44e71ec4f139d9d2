"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelmint.gateway.deps import PlatformDep
from modelmint.gateway.responses import OrjsonResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(platform: PlatformDep) -> OrjsonResponse:
    ready = platform.router.ready
    body = {"status": "ready" if ready else "loading", "models": sorted(platform.router.routes)}
    return OrjsonResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
