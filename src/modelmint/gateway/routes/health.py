"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from modelmint.platform import PlatformDep
from modelmint.web.responses import OrjsonResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(platform: PlatformDep) -> OrjsonResponse:
    """200 once every routed model has a running deployment; 503 while they load, or
    when a model's deployments all failed to start (``failed`` names them; the reasons
    are in ``modelmint models list``)."""
    router = platform.router
    failed = router.unavailable()
    status = "loading" if not router.ready else "degraded" if failed else "ready"
    body = {"status": status, "models": router.serving(), "failed": failed}
    return OrjsonResponse(body, status_code=200 if status == "ready" else 503)


@router.get("/metrics")
async def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers: add up what every process wrote to the shared folder.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
