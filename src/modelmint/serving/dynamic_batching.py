"""Dynamic batching: concurrent requests to a synchronous batch function share its calls.

A local model that answers a batch of inputs almost as fast as one input (a
transformer on the CPU, a scikit-learn pipeline) earns its keep by batching.
``DynamicBatcher`` runs ``fn(list[T]) -> list[R]`` on one worker thread; requests
(each a list of items) queue on the event loop, the worker takes up to
``max_batch_size`` items at a time, and every caller gets its own results back, in
order, with its share of the batch's measured busy time (``engine_ms``): each
item is charged in proportion to its cost units (tokens for a text model).

    batcher = DynamicBatcher(encode, BatchLimits(max_batch_size=32, max_wait_ms=2))
    batcher.start()
    done = await batcher.submit(texts, costs=[len(t) for t in tokens])
    done.results, done.engine_ms

A request may hold more items than a batch: its items then run over several
batches, and its charge is the sum of their shares.

Failures, mapped by the gateway like every ``ModelMintError``:

    ServiceUnavailable  503 + Retry-After  the queue holds max_queue requests; closing
    UpstreamTimeout     504 (queue_timeout) no batch took the request within its timeout
    BackendError        502                 ``fn`` raised (only that batch's callers fail)

A caller cancelled before its first item ran (the client went away) leaves the
queue and costs nothing; once some of its items ran, the rest are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

from modelmint.errors import (
    BackendError,
    InvalidRequest,
    ModelMintError,
    ServiceUnavailable,
    UpstreamTimeout,
)
from modelmint.observability.metrics import (
    BATCHER_BATCH_SIZE,
    BATCHER_BUSY_SECONDS,
    BATCHER_DROPPED,
    BATCHER_ITEMS,
    BATCHER_QUEUE_DEPTH,
)

__all__ = ["BatchLimits", "Batched", "DynamicBatcher"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Seconds a refused client is told to wait: a batch of a small model takes milliseconds,
# so the queue has usually moved on within a second.
_RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """How a batcher groups requests; every field can be set per deployment."""

    # Items per call of the batch function. Past ~32 short texts a CPU transformer gains
    # little per item, while the wait of the last caller in the batch keeps growing.
    max_batch_size: int = 32
    # How long the oldest waiting request may be held for company when the worker is
    # free. Small: it is pure added latency for a caller who turns out to be alone.
    max_wait_ms: float = 2.0
    # Requests allowed to wait; one more gets 503 with Retry-After instead of a long wait.
    max_queue: int = 256
    # How long a request may wait for its first batch to start before it gets 504.
    timeout_ms: float = 30_000.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidRequest("max_batch_size must be at least 1", param="max_batch_size")
        if self.max_wait_ms < 0:
            raise InvalidRequest("max_wait_ms must not be negative", param="max_wait_ms")
        if self.max_queue < 1:
            raise InvalidRequest("max_queue must be at least 1", param="max_queue")
        if self.timeout_ms <= 0:
            raise InvalidRequest("timeout_ms must be positive", param="timeout_ms")

    @classmethod
    def from_config(cls, config: Mapping[str, Any], defaults: BatchLimits | None = None) -> Self:
        """Limits from a deployment's config: keys ``max_batch_size``, ``max_wait_ms``,
        ``max_queue``, ``timeout_ms``; missing keys keep ``defaults``."""
        base = defaults or cls()
        try:
            return cls(
                max_batch_size=int(config.get("max_batch_size", base.max_batch_size)),
                max_wait_ms=float(config.get("max_wait_ms", base.max_wait_ms)),
                max_queue=int(config.get("max_queue", base.max_queue)),
                timeout_ms=float(config.get("timeout_ms", base.timeout_ms)),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"invalid batching config: {exc}", param="config") from exc


@dataclass(frozen=True, slots=True)
class Batched(Generic[R]):
    """One request's answer: a result per item, in order, and what it cost the engine."""

    results: list[R]
    # The request's share of the busy time of every batch its items ran in.
    engine_ms: float
    # From submission to the start of the batch that ran its first item.
    queue_ms: float


@dataclass(eq=False, slots=True)
class _Request(Generic[T, R]):
    items: list[T]
    costs: list[float]
    future: asyncio.Future[Batched[R]]
    loop: asyncio.AbstractEventLoop
    timeout_s: float  # how long it may wait for its first batch
    deadline: float  # time.monotonic() by which its first item must have started
    arrived: float = field(default_factory=time.monotonic)
    # Worker state, guarded by the batcher's condition.
    next: int = 0  # items handed to batches so far
    finished: int = 0  # items whose results are in
    started: float | None = None
    closed: bool = False  # answered, failed, expired or withdrawn: nothing more to do
    results: list[Any] = field(default_factory=list)
    engine_ms: float = 0.0


# One call of the batch function: (request, first item, end) for every request in it.
_Slice = tuple[_Request[Any, Any], int, int]
# What a caller's future is resolved with.
_Answer = tuple[_Request[Any, Any], Batched[Any] | BaseException]


class DynamicBatcher(Generic[T, R]):
    """Runs ``fn`` over batches of items from concurrent callers, on one worker thread."""

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        limits: BatchLimits | None = None,
        *,
        model: str = "",
        deployment: str = "",
    ) -> None:
        self._fn = fn
        self.limits = limits or BatchLimits()
        self._cond = threading.Condition()
        self._queue: deque[_Request[T, R]] = deque()  # guarded by _cond
        self._queued_items = 0  # items of queued requests not yet in a batch; guarded
        self._stopping = False  # guarded by _cond
        self._thread: threading.Thread | None = None
        self._depth = BATCHER_QUEUE_DEPTH.labels(model, deployment)
        self._sizes = BATCHER_BATCH_SIZE.labels(model, deployment)
        self._busy = BATCHER_BUSY_SECONDS.labels(model, deployment)
        self._items = BATCHER_ITEMS.labels(model, deployment)
        self._dropped = {
            reason: BATCHER_DROPPED.labels(model, deployment, reason)
            for reason in ("queue_full", "timeout", "cancelled", "error")
        }

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        """Stop the worker after its current batch; requests still queued get 503."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)

    @property
    def queued(self) -> int:
        """Requests waiting for their first or next batch."""
        with self._cond:
            return len(self._queue)

    # -- the event loop side -----------------------------------------------------------

    async def submit(
        self,
        items: Sequence[T],
        costs: Sequence[float] | None = None,
        *,
        timeout_ms: float | None = None,
    ) -> Batched[R]:
        """Queue ``items`` and wait for their results; ``costs`` (default 1 each) decide
        each item's share of the busy time of its batch."""
        if costs is not None and len(costs) != len(items):
            raise ValueError("one cost per item")
        if not items:
            return Batched([], 0.0, 0.0)
        loop = asyncio.get_running_loop()
        wait_s = (timeout_ms if timeout_ms is not None else self.limits.timeout_ms) / 1000.0
        request: _Request[T, R] = _Request(
            items=list(items),
            costs=[float(c) for c in costs] if costs is not None else [1.0] * len(items),
            future=loop.create_future(),
            loop=loop,
            timeout_s=wait_s,
            deadline=time.monotonic() + wait_s,
        )
        self._enqueue(request)
        try:
            done, _ = await asyncio.wait((request.future,), timeout=wait_s)
            if not done and self._expire(request):
                self._dropped["timeout"].inc()
                raise _timeout(request)
            # Started in time: the answer comes when its last batch ends.
            return await request.future
        except asyncio.CancelledError:
            if self._withdraw(request):
                self._dropped["cancelled"].inc()
            raise

    def _enqueue(self, request: _Request[T, R]) -> None:
        with self._cond:
            if self._stopping or self._thread is None:
                raise ServiceUnavailable("the model is not running", retry_after=_RETRY_AFTER_S)
            if len(self._queue) >= self.limits.max_queue:
                self._dropped["queue_full"].inc()
                raise ServiceUnavailable(
                    f"{len(self._queue)} requests are already waiting for this model",
                    retry_after=_RETRY_AFTER_S,
                )
            self._queue.append(request)
            self._queued_items += len(request.items)
            self._depth.set(len(self._queue))
            self._cond.notify()

    def _expire(self, request: _Request[T, R]) -> bool:
        """Drop a request whose first item has not started; False if it has (let it run)."""
        with self._cond:
            if request.closed or request.started is not None:
                return False
            self._close(request)
            return True

    def _withdraw(self, request: _Request[T, R]) -> bool:
        """The caller is gone: skip whatever of its items has not run. True if none had."""
        with self._cond:
            if request.closed:
                return False
            self._close(request)
            return request.started is None

    def _close(self, request: _Request[T, R]) -> None:
        """Mark the request finished and take it out of the queue (lock held)."""
        request.closed = True
        if request.next < len(request.items):
            self._queue.remove(request)
            self._queued_items -= len(request.items) - request.next
            self._depth.set(len(self._queue))

    # -- the worker thread --------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run(batch)
        finally:
            # Closing (or a bug in this loop): nobody may wait forever.
            with self._cond:
                self._stopping = True
                orphans = [r for r in self._queue if not r.closed]
                for request in orphans:
                    self._close(request)
            stopped = "the model stopped"
            _post([(r, ServiceUnavailable(stopped, retry_after=_RETRY_AFTER_S)) for r in orphans])

    def _next_batch(self) -> list[_Slice] | None:
        """Block until a batch should start, then take its items. None when closing.

        When to start is the whole latency/throughput trade. A batch starts at once when
        it is full, and otherwise when the oldest waiting request has waited
        ``max_wait_ms`` since it arrived, not since the worker became free. So:
        - at low load a lone request waits at most ``max_wait_ms`` (keep it small next
          to one forward pass) for company that may never come;
        - under load, requests that queued while the previous batch ran have already
          waited longer than that, so the worker starts again the moment it is free with
          everything that arrived meanwhile. Batches then grow with the load by
          themselves, the model never idles while work waits, and the event loop answers
          one batch's callers while the next batch computes, instead of the two taking
          turns (which waiting for full batches would force).
        """
        limits = self.limits
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                # Posting only schedules a callback on each caller's loop: safe under the lock.
                _post([(r, _timeout(r)) for r in self._take_expired(now)])
                if not self._queue:
                    self._cond.wait()
                    continue
                start_at = self._queue[0].arrived + limits.max_wait_ms / 1000.0
                if self._queued_items >= limits.max_batch_size or now >= start_at:
                    return self._take(now)
                nearest = min(start_at, min(r.deadline for r in self._queue))
                self._cond.wait(timeout=max(0.0, nearest - now))

    def _take_expired(self, now: float) -> list[_Request[T, R]]:
        expired = [r for r in self._queue if r.started is None and r.deadline <= now]
        for request in expired:
            self._close(request)
            self._dropped["timeout"].inc()
        return expired

    def _take(self, now: float) -> list[_Slice]:
        """Up to ``max_batch_size`` items from the head of the queue, oldest first."""
        room = self.limits.max_batch_size
        batch: list[_Slice] = []
        while room and self._queue:
            request = self._queue[0]
            if request.started is None:
                request.started = now
            count = min(room, len(request.items) - request.next)
            batch.append((request, request.next, request.next + count))
            request.next += count
            room -= count
            self._queued_items -= count
            if request.next == len(request.items):
                self._queue.popleft()
        self._depth.set(len(self._queue))
        return batch

    def _run(self, batch: list[_Slice]) -> None:
        items = [item for request, lo, hi in batch for item in request.items[lo:hi]]
        error: ModelMintError | None = None
        results: list[R] = []
        started = time.perf_counter()
        try:
            results = self._fn(items)
            if len(results) != len(items):
                raise BackendError(f"the model gave {len(results)} results for {len(items)} inputs")
        except ModelMintError as exc:
            error = exc
        except Exception as exc:
            log.exception("batch of %d items failed", len(items))
            error = BackendError(f"the model failed on this batch: {exc.__class__.__name__}")
        busy_s = time.perf_counter() - started
        self._busy.inc(busy_s)
        self._sizes.observe(len(items))
        self._items.inc(len(items))
        with self._cond:
            answers = (
                self._fail(batch, error)
                if error is not None
                else self._settle(batch, results, busy_s * 1000.0)
            )
        _post(answers)

    def _settle(self, batch: list[_Slice], results: list[R], busy_ms: float) -> list[_Answer]:
        """Hand out results and shares of ``busy_ms`` (lock held); the finished requests."""
        total = sum(c for request, lo, hi in batch for c in request.costs[lo:hi])
        count = sum(hi - lo for _, lo, hi in batch)
        answers: list[_Answer] = []
        offset = 0
        for request, lo, hi in batch:
            mine = results[offset : offset + hi - lo]
            offset += hi - lo
            if request.closed:
                continue  # withdrawn while its batch ran: computed, but nobody to charge
            cost = sum(request.costs[lo:hi])
            # Zero-cost items (or all-zero costs) still occupied the batch: share evenly.
            share = cost / total if total > 0 else (hi - lo) / count
            request.engine_ms += busy_ms * share
            request.results.extend(mine)
            request.finished += hi - lo
            if request.finished == len(request.items):
                request.closed = True
                assert request.started is not None
                queue_ms = (request.started - request.arrived) * 1000.0
                answers.append((request, Batched(request.results, request.engine_ms, queue_ms)))
        return answers

    def _fail(self, batch: list[_Slice], error: ModelMintError) -> list[_Answer]:
        failed: list[_Answer] = []
        for request, _, _ in batch:
            if not request.closed:
                self._close(request)  # its items still queued are skipped too
                self._dropped["error"].inc()
                # One exception object per caller: each raise writes its own traceback.
                failed.append((request, copy.copy(error)))
        return failed


def _timeout(request: _Request[Any, Any]) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"the model could not start this request within {request.timeout_s:g} s",
        code="queue_timeout",
    )


def _post(answers: Sequence[_Answer]) -> None:
    """Resolve callers' futures on their own event loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for request, answer in answers:
        by_loop.setdefault(request.loop, []).append((request.future, answer))
    for loop, settled in by_loop.items():
        # RuntimeError: that loop is closed, so its callers are gone.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, answer in settled:
        if future.done():
            continue
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(answer)
