"""A real OpenAI-compatible upstream for tests and benchmarks: aiohttp.web on 127.0.0.1.

It serves ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``,
plain or as server-sent events, and misbehaves on request so that tests can drive
every failure path of a remote backend over real sockets::

    async with MockUpstream() as upstream:          # listens on a free port
        upstream.fail_next(2, status=503)           # the next two requests get 503
        ...call something pointed at upstream.base_url...
        assert len(upstream.requests) == 3          # every attempt is recorded
        assert upstream.requests[-1].headers["authorization"] == "Bearer sk-test"

Knobs (plain attributes, change them at any time): ``reply``, ``prompt_tokens``,
``completion_tokens``, ``omit_usage``, ``delay_s``, ``cut_stream_after``, ``cut_by``.
One-shot faults queue up with ``fail_next``, ``reset_next`` and ``garble_next``.

Standalone, for load benchmarks (answers at once, records nothing)::

    python -m tests.support.mock_upstream --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web

__all__ = ["MockUpstream", "Received"]


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the upstream saw it; header names are lower-cased."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Fault:
    kind: Literal["status", "reset", "garble"]
    status: int = 200
    retry_after: str | None = None


class MockUpstream:
    def __init__(
        self,
        *,
        reply: str = "The quick brown fox jumps over the lazy dog.",
        prompt_tokens: int = 13,
        completion_tokens: int = 9,
        record: bool = True,
    ) -> None:
        # The answer to every text request; streams send it one word per chunk.
        self.reply = reply
        # What the usage block reports: deliberately not what a tokenizer would count,
        # so a test can tell reported usage from an estimate.
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.omit_usage = False
        # Hold every request this long before answering (``release()`` ends the wait).
        self.delay_s = 0.0
        # Streams: after this many content chunks, "drop" the connection or "stall" it
        # (hold it open and silent until ``release()`` or ``close()``).
        self.cut_stream_after: int | None = None
        self.cut_by: Literal["drop", "stall"] = "drop"
        self.requests: list[Received] = []
        self._record = record
        self._faults: deque[_Fault] = deque()
        self._arrived = asyncio.Condition()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self._text)
        self.app.router.add_post("/v1/completions", self._text)
        self.app.router.add_post("/v1/embeddings", self._embeddings)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> MockUpstream:
        # Bind the socket ourselves: port 0 picks a free port and we can read it back.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        # Short shutdown: a held request is released on close, nothing should linger.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def close(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MockUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- controls ----------------------------------------------------------------------

    def fail_next(self, n: int = 1, *, status: int = 500, retry_after: str | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` and an OpenAI error body."""
        self._faults.extend(_Fault("status", status, retry_after) for _ in range(n))

    def reset_next(self, n: int = 1) -> None:
        """Close the connection of the next ``n`` requests without answering."""
        self._faults.extend(_Fault("reset") for _ in range(n))

    def garble_next(self, n: int = 1) -> None:
        """Answer the next ``n`` requests with 200 and JSON that is no OpenAI answer."""
        self._faults.extend(_Fault("garble") for _ in range(n))

    def release(self) -> None:
        """End every current and future hold (``delay_s``, stalled streams)."""
        self._released.set()

    async def wait_for_requests(self, n: int) -> None:
        """Return once at least ``n`` requests have arrived (fail after 5 s)."""
        async with asyncio.timeout(5.0), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= n)

    # -- handlers ----------------------------------------------------------------------

    async def _admit(
        self, request: web.Request
    ) -> tuple[dict[str, Any], web.StreamResponse | None]:
        """Record the request and apply faults; returns its body and an early answer, if any."""
        body = orjson.loads(await request.read())
        if self._record:
            headers = {k.lower(): v for k, v in request.headers.items()}
            async with self._arrived:
                self.requests.append(Received(request.path, headers, body))
                self._arrived.notify_all()
        if self.delay_s:
            await self._hold(self.delay_s)
            if request.transport is None or request.transport.is_closing():
                return body, web.Response()  # the client gave up; nobody to answer
        if not self._faults:
            return body, None
        fault = self._faults.popleft()
        if fault.kind == "reset":
            assert request.transport is not None
            request.transport.close()
            return body, web.Response()  # never sent: the connection is gone
        if fault.kind == "garble":
            return body, web.Response(body=b"[1, 2, 3]", content_type="application/json")
        error = {"message": f"mock upstream failure {fault.status}", "type": "mock_error"}
        retry = {"Retry-After": fault.retry_after} if fault.retry_after else None
        return body, _json({"error": error}, status=fault.status, headers=retry)

    async def _hold(self, seconds: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), seconds)

    def _usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    async def _text(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if early is not None:
            return early
        chat = request.path.endswith("/chat/completions")
        if body.get("stream"):
            return await self._stream(request, body, chat)
        if chat:
            message = {"role": "assistant", "content": self.reply}
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": self.reply, "finish_reason": "stop", "logprobs": None}
        payload = self._envelope(body, chat, [choice])
        payload["object"] = "chat.completion" if chat else "text_completion"
        payload["system_fingerprint"] = "fp_mock"
        if not self.omit_usage:
            payload["usage"] = self._usage()
        return _json(payload)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], chat: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        options = body.get("stream_options") or {}
        with_usage = bool(options.get("include_usage")) and not self.omit_usage

        async def send(choices: list[dict[str, Any]]) -> None:
            chunk = self._envelope(body, chat, choices)
            if with_usage:
                chunk["usage"] = None  # as OpenAI does on every chunk but the last
            await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        if chat:
            await send([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
        for n, word in enumerate(re.findall(r"\S+\s*", self.reply)):
            if n == self.cut_stream_after:
                if self.cut_by == "stall":
                    await self._hold(None)
                if request.transport is not None:  # None if the client left first
                    request.transport.close()  # flushes what was written, then FIN
                return response
            part = {"content": word} if chat else None
            await send([_piece(part, word, None)])
        await send([_piece({} if chat else None, "", "stop")])
        if with_usage:
            last = self._envelope(body, chat, [])
            last["usage"] = self._usage()
            await response.write(b"data: " + orjson.dumps(last) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._admit(request)
        if early is not None:
            return early
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_of(text, i)}
            for i, text in enumerate(texts)
        ]
        payload: dict[str, Any] = {"object": "list", "data": data, "model": body.get("model")}
        if not self.omit_usage:
            payload["usage"] = {
                "prompt_tokens": self.prompt_tokens,
                "total_tokens": self.prompt_tokens,
            }
        return _json(payload)

    def _envelope(
        self, body: dict[str, Any], chat: bool, choices: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "id": "chatcmpl-mock" if chat else "cmpl-mock",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "mock"),
            "choices": choices,
        }


def embedding_of(text: str, index: int) -> list[float]:
    """The vector the mock returns for ``text`` at ``index``: easy to assert exactly."""
    return [float(len(text)), float(index), 0.25]


def _piece(delta: dict[str, Any] | None, text: str, finish: str | None) -> dict[str, Any]:
    if delta is None:  # completions stream text, chat streams deltas
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {"index": 0, "delta": delta, "finish_reason": finish}


def _json(
    payload: dict[str, Any], *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the mock OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    web.run_app(MockUpstream(record=False).app, host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
