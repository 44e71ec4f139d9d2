"""Group commit of usage events.

Requests hand their event to one writer thread and wait for its commit. While
the writer commits one batch, the next batch gathers, so under load hundreds of
requests share a transaction and its fsync, and at low load a lone request
waits for a single small commit. Inserts ignore ids already present, which
makes a retried write harmless.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, StatementError

from modelmint.errors import ServiceUnavailable
from modelmint.metering.events import UsageEvent
from modelmint.storage.db import Database
from modelmint.storage.tables import UsageRecord

__all__ = ["UsageWriter"]

log = logging.getLogger(__name__)

_STOP = object()


class UsageWriter:
    def __init__(self, database: Database, *, max_batch: int = 1000) -> None:
        self._db = database
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # Guards ``_closed`` so that no event can be queued behind the stop marker.
        self._lock = threading.Lock()
        self._closed = False
        self._table: Table = UsageRecord.__table__  # type: ignore[assignment]
        self.batches = 0
        self.events = 0

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
            if item is not _STOP and item[1].set_running_or_notify_cancel():
                item[1].set_exception(ServiceUnavailable("usage writer is not running"))

    def submit(self, event: UsageEvent) -> Future[None]:
        """Queue an event; the future completes once its transaction has committed."""
        future: Future[None] = Future()
        with self._lock:
            if self._closed:
                future.set_exception(ServiceUnavailable("usage writer is closed"))
            else:
                self._queue.put((event, future))
        return future

    async def record(self, event: UsageEvent) -> None:
        """Write the event durably; returns only after the commit."""
        try:
            await asyncio.wrap_future(self.submit(event))
        except ServiceUnavailable:
            raise
        except Exception as exc:
            raise ServiceUnavailable("usage could not be recorded; try again") from exc

    def _insert(self) -> Any:
        statement = (sqlite.insert if self._db.is_sqlite else postgresql.insert)(self._table)
        return statement.on_conflict_do_nothing(index_elements=["id"])

    def _run(self) -> None:
        statement = self._insert()
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
                self._commit(statement, batch)
            if stop:
                return

    def _commit(self, statement: Any, batch: list[tuple[UsageEvent, Future[None]]]) -> None:
        for _, future in batch:
            # From here on a waiter can no longer cancel its future. One cancelled earlier
            # (its request task was cancelled, e.g. the client went away) is still written:
            # the usage happened.
            future.set_running_or_notify_cancel()
        try:
            self._write(statement, batch)
        except Exception as exc:
            if len(batch) > 1 and _bad_data(exc):
                # One malformed event must not cost the rest of the batch its record.
                log.error("usage batch of %d refused (%s); writing one by one", len(batch), exc)
                for item in batch:
                    try:
                        self._write(statement, [item])
                    except Exception as single:
                        log.error("usage event %s failed to commit: %s", item[0].id, single)
                        _settle(item[1], single)
                    else:
                        _settle(item[1], None)
                return
            log.error("usage batch of %d failed to commit: %s", len(batch), exc)
            for _, future in batch:
                _settle(future, exc)
            return
        for _, future in batch:
            _settle(future, None)

    def _write(self, statement: Any, batch: list[tuple[UsageEvent, Future[None]]]) -> None:
        with self._db.engine.begin() as connection:
            connection.execute(statement, [event.row() for event, _ in batch])
        self.batches += 1
        self.events += len(batch)


def _bad_data(exc: Exception) -> bool:
    """Whether the rows themselves were refused, as opposed to the database being down."""
    if isinstance(exc, IntegrityError | DataError):
        return True
    # A value the driver could not even bind (e.g. a naive datetime): a StatementError that
    # the database never saw.
    return isinstance(exc, StatementError) and not isinstance(exc, DBAPIError)


def _settle(future: Future[None], error: BaseException | None) -> None:
    """Complete a future unless its waiter cancelled it (setting it then would raise)."""
    if future.cancelled():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
