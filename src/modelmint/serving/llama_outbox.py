"""The batching engine's way back to the event loops: its events for the request streams,
gathered during a step and sent once per step, one wake-up per event loop.
"""

from __future__ import annotations

import asyncio
import threading
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

    def flush(self, handoff_s: float = 0.0) -> None:
        """Send what was posted; with ``handoff_s``, then wait (at most that long) until
        the event loops have handled it, i.e. written the step's tokens to their clients.

        The wait hands the cores to the event loop between two steps. Without it, the
        loop wakes while llama.cpp's threads compute the next step on both cores, and a
        token waited 0.3-4.7 ms after its step for the scheduler to give the loop a core
        (measured at concurrency 1; the loop's work per token is about 0.25 ms). With it,
        the median first token at concurrency 1 came in 12.0 ms instead of 13.0, at 8 in
        79 instead of 105, tokens/s unchanged (docs/benchmarks.md, session 13).
        """
        items, self._items = self._items, {}
        handled = threading.Event() if handoff_s > 0 and items else None
        for loop, events in items.items():
            try:
                loop.call_soon_threadsafe(_deliver, events, handled)
            except RuntimeError:  # that event loop is closed: nobody will read these
                for job, _, _ in events:
                    job.cancelled.set()
        if handled is not None:
            handled.wait(handoff_s)


def _deliver(events: list[tuple[Job, str, Any]], handled: threading.Event | None) -> None:
    for job, kind, value in events:
        if kind == "done":
            resolve(job.done)
        else:
            job.queue.put_nowait((kind, value))
    if handled is not None:
        # Behind the stream tasks these events woke: each writes its chunk and waits for
        # its next event before this runs. (With several event loops, the first to get
        # here ends the wait.)
        asyncio.get_running_loop().call_soon(handled.set)


def resolve(future: asyncio.Future[None]) -> None:
    """Complete ``future`` unless it already is (its waiter may have been cancelled)."""
    if not future.done():
        future.set_result(None)
