"""A streamed answer that is metered exactly once, however it ends.

It ends in one of three ways: the backend finishes (the usage record is committed
before the final chunk, so a client that saw ``[DONE]`` was metered), the backend
fails mid-stream (an error event in-band; what was sent is metered), or the client
goes away, possibly before the first byte was even sent (``aclose`` meters what was
produced). ``aclose`` is idempotent and the response calls it in every case.

When the caller opted in to sample capture, what was sent is also kept as a
``Transcript`` and handed to ``capture`` once, however the stream ended.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from modelmint.errors import ModelMintError
from modelmint.inference.envelope import Envelope, sse
from modelmint.inference.transcript import Transcript
from modelmint.serving.types import StreamDelta, Usage

__all__ = ["MeteredStream"]


class MeteredStream:
    def __init__(
        self,
        pieces: AsyncIterator[StreamDelta],
        first: StreamDelta,
        usage: Usage,
        envelope: Envelope,
        include_usage: bool,
        *,
        # ``record`` commits durably (awaited); ``record_later`` queues, for paths that
        # must not wait (an error, or a cancelled client).
        record: Callable[[Usage, str | None], Awaitable[None]],
        record_later: Callable[[Usage, str], None],
        capture: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self._pieces = pieces
        self._first = first
        self._usage = usage
        self._envelope = envelope
        self._include_usage = include_usage
        self._record = record
        self._record_later = record_later
        self._done = False
        self._capture = capture
        self._transcript = Transcript(envelope.object == "chat.completion") if capture else None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        finish: str | None = None
        delta: StreamDelta | None = self._first
        try:
            while delta is not None:
                if delta.choices:
                    finish = delta.choices[-1].get("finish_reason") or finish
                    if self._transcript is not None:
                        self._transcript.add(delta.choices)
                    yield self._envelope.chunk(delta.choices, self._include_usage)
                delta = await anext(self._pieces, None)
        except ModelMintError as exc:
            # The stream already started: tell the client in-band, meter what was sent.
            await self._close_backend()
            self._finish_later("error")
            yield sse(exc.to_body())
            return
        await self._close_backend()
        self._done = True
        await self._record(self._usage, finish)
        self._captured(None)
        if self._include_usage:
            yield self._envelope.usage_chunk(self._usage)
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        """Meter a stream that did not run to its end (client gone). Idempotent."""
        if self._done:
            return
        await self._close_backend()
        self._finish_later("cancelled")

    def _finish_later(self, reason: str) -> None:
        if not self._done:
            self._done = True
            self._record_later(self._usage, reason)
            self._captured(reason)

    def _captured(self, ending: str | None) -> None:
        if self._capture is not None and self._transcript is not None:
            self._capture(self._transcript.choices(ending))

    async def _close_backend(self) -> None:
        # Closing runs the backend's own clean-up (a local engine stops decoding).
        with contextlib.suppress(Exception):
            await self._pieces.aclose()  # type: ignore[attr-defined]
