"""Response classes: orjson JSON, and server-sent events that are always metered."""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import anyio
import orjson
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

__all__ = ["EventStream", "EventStreamResponse", "OrjsonResponse", "attachment"]


def attachment(body: bytes | str, media_type: str, filename: str) -> Response:
    """A file to download (an invoice's PDF or CSV), named ``filename``."""
    return Response(
        body,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


class EventStream(Protocol):
    def __aiter__(self) -> Any: ...

    async def aclose(self) -> None: ...


class EventStreamResponse(Response):
    """Sends an event stream and always closes it, even when the client left before the
    first byte: Starlette's StreamingResponse never starts (so never closes) a body
    iterator whose client is already gone, and the stream's usage would go unrecorded."""

    media_type = "text/event-stream"

    def __init__(self, stream: EventStream, headers: dict[str, str]) -> None:
        # No Response.__init__: it would declare a Content-Length for a body we stream.
        self.stream = stream
        self.status_code = 200
        self.background = None
        every = {
            **headers,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            "content-type": "text/event-stream; charset=utf-8",
        }
        self.raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in every.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                # OSError: the client went away while we were sending.
                with contextlib.suppress(OSError):
                    await self._send_all(send)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _send_all(self, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        async for chunk in self.stream:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
