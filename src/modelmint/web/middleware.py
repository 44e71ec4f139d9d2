"""ASGI middleware around the whole app: request id, body and header size limits, access log,
HTTP metrics.

Written against raw ASGI rather than Starlette's BaseHTTPMiddleware, which buffers
and re-wraps every response and costs streaming requests their latency.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelmint.accounts.keys import redact_secrets
from modelmint.errors import HeadersTooLarge, ModelMintError, PayloadTooLarge
from modelmint.observability.logs import request_id_var
from modelmint.observability.metrics import HTTP_REQUESTS

__all__ = ["GatewayMiddleware", "header", "new_request_id"]

log = logging.getLogger("modelmint.access")
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The HTTP server (httptools) reads headers of any size; cap what reaches the app, as
# proxies do (nginx allows 4 x 8 KiB). An OpenAI client sends about 15 headers, 1 KiB.
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 128


# A random prefix per process and a counter: unique across processes and restarts, and
# far cheaper than drawing fresh randomness for every request.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_id_counter):08x}"


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Our id keys the usage record; a client's X-Request-ID is echoed and logged
        # but never trusted as a record key (two requests could share it).
        request_id = new_request_id()
        client_id = header(scope, b"x-request-id")
        if client_id is not None and not _CLIENT_ID.fullmatch(client_id):
            client_id = None
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        echo_id = (client_id or request_id).encode()
        status = 500

        if _headers_too_large(scope):
            error = HeadersTooLarge(
                f"request headers exceed {MAX_HEADERS} fields or {MAX_HEADER_BYTES} bytes"
            )
            await self._reject(send, echo_id, error)
            self._done(scope, 431, started, client_id)
            request_id_var.reset(token)
            return

        length = header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await self._reject_too_large(send, echo_id)
            self._done(scope, 413, started, client_id)
            request_id_var.reset(token)
            return

        received = 0
        response_started = False
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise PayloadTooLarge("request body too large")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal status, response_started
            if too_large:
                # Whatever the app made of the aborted body read, the answer is our 413.
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", echo_id)]
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge:
            pass
        finally:
            if too_large and not response_started:
                status = 413
                await self._reject_too_large(send, echo_id)
            self._done(scope, status, started, client_id)
            request_id_var.reset(token)

    def _done(self, scope: Scope, status: int, started: float, client_id: str | None) -> None:
        route = scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        HTTP_REQUESTS.labels(label, str(status)).inc()
        extra: dict[str, Any] = {
            "method": scope["method"],
            # A key may be revoked by its secret: /admin/keys/{secret}/revoke.
            "path": redact_secrets(scope["path"]),
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        }
        state = scope.get("state", {})
        for name in ("organization_id", "model"):
            if name in state:
                extra[name] = state[name]
        if client_id:
            extra["client_request_id"] = client_id
        log.info("request", extra=extra)

    async def _reject_too_large(self, send: Send, echo_id: bytes) -> None:
        error = PayloadTooLarge(f"request body exceeds {self.max_body_bytes} bytes")
        await self._reject(send, echo_id, error)

    async def _reject(self, send: Send, echo_id: bytes, error: ModelMintError) -> None:
        body = orjson.dumps(error.to_body())
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", echo_id),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _headers_too_large(scope: Scope) -> bool:
    headers = scope["headers"]
    if len(headers) > MAX_HEADERS:
        return True
    return sum(len(key) + len(value) for key, value in headers) > MAX_HEADER_BYTES


def header(scope: Scope, name: bytes) -> str | None:
    """A request header from the raw ASGI scope (names are lower-case bytes)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
