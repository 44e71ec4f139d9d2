"""The batching engine's way back to the event loops: its events for the request streams,
gathered during a step and sent once per step, one wake-up per event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelmint.serving.llama_sequence import Job

__all__ = ["Outbox", "resolve"]


class Outbox:
    """Events for the event loops, sent once per step: one wake-up per loop, not per token.

    Fewer wake-ups matter on a small machine: the event loop thread competes for the
    cores that llama.cpp's threads spin on.
    """

    def __init__(self) -> None:
        self._items: dict[asyncio.AbstractEventLoop, list[tuple[Job, str, Any]]] = {}

    def post(self, job: Job, kind: str, value: Any = None) -> None:
        """Queue ``(kind, value)`` for the job's stream; kind "done" resolves ``job.done``."""
        self._items.setdefault(job.loop, []).append((job, kind, value))

    def flush(self) -> None:
        items, self._items = self._items, {}
        for loop, events in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, events)
            except RuntimeError:  # that event loop is closed: nobody will read these
                for job, _, _ in events:
                    job.cancelled.set()


def _deliver(events: list[tuple[Job, str, Any]]) -> None:
    for job, kind, value in events:
        if kind == "done":
            resolve(job.done)
        else:
            job.queue.put_nowait((kind, value))


def resolve(future: asyncio.Future[None]) -> None:
    """Complete ``future`` unless it already is (its waiter may have been cancelled)."""
    if not future.done():
        future.set_result(None)
