"""Group commit of usage events.

Requests hand their event to one writer thread and wait for its commit. While
the writer commits one batch, the next batch gathers, so under load hundreds of
requests share a transaction and its fsync, and at low load a lone request
waits for a single small commit. Inserts ignore ids already present, which
makes a retried write harmless. The hourly rollups are updated in the same
transaction, from the rows that were actually inserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from modelmint.errors import ServiceUnavailable
from modelmint.metering.events import UsageEvent
from modelmint.metering.store import Charging, UsageStore
from modelmint.storage.db import Database

__all__ = ["UsageWriter"]

log = logging.getLogger(__name__)

_STOP = object()
# Whoever waits for an event's commit: a thread-safe future (``submit``) or an asyncio
# future of the requesting event loop (``record``).
_Waiter = Future[None] | asyncio.Future[None]


class UsageWriter:
    def __init__(
        self, database: Database, *, max_batch: int = 1000, charging: Charging | None = None
    ) -> None:
        self._db = database
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Guards ``_closed`` so that no event can be queued behind the stop marker.
        self._lock = threading.Lock()
        self._closed = False
        self._store = UsageStore(database, charging)
        # Held while a batch is written, by the writer thread or by a lone ``record``.
        self._writing = threading.Lock()
        self.batches = 0
        self.events = 0
        # False from a commit that failed for want of a database until one succeeds:
        # admission then stops admitting paid requests from memory (see SpendGuard).
        self.healthy = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Commit everything already submitted, then stop."""
        with self._lock:
            self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        # Events queued on a writer that never started: fail them rather than leave their
        # callers waiting forever.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                _deliver([(item[1], ServiceUnavailable("usage writer is not running"))])

    def submit(self, event: UsageEvent) -> Future[None]:
        """Queue an event; the future completes once its transaction has committed."""
        future: Future[None] = Future()
        self._enqueue(event, future)
        return future

    async def record(self, event: UsageEvent, *, alone: bool = False) -> None:
        """Write the event durably; returns only after the commit.

        ``alone`` says no other request of this process is in flight: with nobody to
        share a batch with, the commit is made right here, which spares the request two
        thread hand-offs (about half a millisecond on an idle machine). Under load the
        writer thread batches as usual.
        """
        if alone and self._queue.empty() and self._writing.acquire(blocking=False):
            try:
                if self._closed:
                    raise ServiceUnavailable("usage writer is closed")
                self._write([(event, None)])
            except ServiceUnavailable:
                self._store.lost([event])
                raise
            except Exception as exc:
                self._store.lost([event])
                raise ServiceUnavailable("usage could not be recorded; try again") from exc
            finally:
                self._writing.release()
            return
        # An asyncio future, not a wrapped concurrent one: the writer then wakes each event
        # loop once per batch instead of once per request.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(event, waiter)
        try:
            await waiter
        except ServiceUnavailable:
            raise
        except Exception as exc:
            raise ServiceUnavailable("usage could not be recorded; try again") from exc

    def _enqueue(self, event: UsageEvent, waiter: _Waiter) -> None:
        with self._lock:
            if self._closed:
                _settle_now(waiter, ServiceUnavailable("usage writer is closed"))
            else:
                self._queue.put((event, waiter))

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._store.close()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is _STOP else [first]
            stop = first is _STOP
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    continue
                batch.append(item)
            if batch:
                with self._writing:
                    self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[UsageEvent, _Waiter]]) -> None:
        # A waiter cancelled before or during the commit (its request task was cancelled,
        # e.g. the client went away) still has its event written: the usage happened.
        try:
            self._write(batch)
        except Exception as exc:
            if len(batch) > 1 and isinstance(exc, self._store.data_errors):
                # One malformed event must not cost the rest of the batch its record.
                log.error("usage batch of %d refused (%s); writing one by one", len(batch), exc)
                outcomes: list[tuple[_Waiter, BaseException | None]] = []
                for event, waiter in batch:
                    try:
                        self._write([(event, waiter)])
                    except Exception as single:
                        log.error("usage event %s failed to commit: %s", event.id, single)
                        self._store.lost([event])
                        outcomes.append((waiter, single))
                    else:
                        outcomes.append((waiter, None))
                _deliver(outcomes)
                return
            log.error("usage batch of %d failed to commit: %s", len(batch), exc)
            self._store.lost([event for event, _ in batch])
            _deliver([(waiter, exc) for _, waiter in batch])
            return
        _deliver([(waiter, None) for _, waiter in batch])

    def _write(self, batch: Sequence[tuple[UsageEvent, _Waiter | None]]) -> None:
        try:
            self._store.write([event for event, _ in batch])
        except Exception as exc:
            if not isinstance(exc, self._store.data_errors):
                self.healthy = False
            raise
        self.healthy = True
        self.batches += 1
        self.events += len(batch)


def _settle_now(waiter: _Waiter, error: BaseException | None) -> None:
    """Complete a waiter unless it was cancelled (setting it then would raise).

    For an asyncio future this must run on its own event loop's thread.
    """
    if waiter.done():
        return
    if isinstance(waiter, Future) and not waiter.set_running_or_notify_cancel():
        return
    if error is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(error)


def _settle_all(outcomes: list[tuple[_Waiter, BaseException | None]]) -> None:
    for waiter, error in outcomes:
        _settle_now(waiter, error)


def _deliver(outcomes: list[tuple[_Waiter, BaseException | None]]) -> None:
    """Settle waiters from the writer thread: thread-safe futures directly, asyncio futures
    with one call into each event loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Waiter, BaseException | None]]] = {}
    for waiter, error in outcomes:
        if isinstance(waiter, asyncio.Future):
            by_loop.setdefault(waiter.get_loop(), []).append((waiter, error))
        else:
            _settle_now(waiter, error)
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle_all, items)
