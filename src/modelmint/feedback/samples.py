"""Opt-in capture of served requests' text, redacted before storage, kept for a while.

An organisation (or one key) opts in with a retention period. The gateway offers
each answered request to a ``SampleRecorder``; when the caller has not opted in that
costs one set lookup, and when it has, the request is only queued: a worker thread
redacts PII (``training.pii``: emails, phones, card numbers, API keys) and writes the
row, so capture never slows or fails a paid request. The same thread deletes expired
samples periodically; ``purge_expired`` is also what ``modelmint samples purge`` runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import orjson
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, NotFound
from modelmint.storage.db import Database
from modelmint.storage.tables import ApiKey, Organization, RequestSample, SampleCapturePolicy
from modelmint.training.pii import scrub

__all__ = [
    "CapturedSample",
    "SampleRecorder",
    "Scope",
    "delete_organization_samples",
    "list_policies",
    "purge_expired",
    "redact",
    "remove_policy",
    "set_policy",
    "store_sample",
]

log = logging.getLogger(__name__)
Scope = Literal["organization", "key"]
_STOP = object()


# -- policies -----------------------------------------------------------------------------


def set_policy(
    session: Session, scope: Scope, subject: str, retention_days: int
) -> SampleCapturePolicy:
    """Opt an organisation (name or id) or an API key (id) in, keeping samples N days."""
    if retention_days < 1:
        raise InvalidRequest("retention must be at least one day", param="retention_days")
    subject_id, organization_id = _subject(session, scope, subject)
    policy = session.get(SampleCapturePolicy, (scope, subject_id))
    if policy is None:
        policy = SampleCapturePolicy(
            scope=scope, subject_id=subject_id, organization_id=organization_id
        )
        session.add(policy)
    policy.retention_days = retention_days
    session.flush()
    return policy


def remove_policy(session: Session, scope: Scope, subject: str) -> bool:
    """Opt a subject out; samples already stored stay until they expire."""
    subject_id, _ = _subject(session, scope, subject)
    policy = session.get(SampleCapturePolicy, (scope, subject_id))
    if policy is None:
        return False
    session.delete(policy)
    return True


def list_policies(session: Session) -> list[SampleCapturePolicy]:
    return list(session.scalars(select(SampleCapturePolicy)))


def _subject(session: Session, scope: Scope, subject: str) -> tuple[str, str]:
    if scope == "key":
        key = session.get(ApiKey, subject)
        if key is None:
            raise NotFound(f"no API key {subject!r}")
        return key.id, key.organization_id
    org = session.get(Organization, subject) or session.scalar(
        select(Organization).where(Organization.name == subject)
    )
    if org is None:
        raise NotFound(f"no organisation {subject!r}")
    return org.id, org.id


def _retention_by_subject(session: Session) -> dict[str, int]:
    return {p.subject_id: p.retention_days for p in list_policies(session)}


# -- samples -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapturedSample:
    """One answered request as the gateway saw it, not yet redacted."""

    request_id: str
    organization_id: str
    api_key_id: str
    model: str
    model_version_id: str | None
    endpoint: str
    request: Any
    response: Any
    created_at: datetime = field(default_factory=utcnow)


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"  # images are not text to keep
    raise TypeError(type(value).__name__)


def redact(value: Any) -> tuple[str, dict[str, int]]:
    """``value`` as JSON text with every PII match in its strings replaced, and the counts
    per kind. Only strings are scrubbed: a feature's or a score's digits are numbers,
    and scrubbing the JSON text would mistake them for phone or card numbers."""
    counts: dict[str, int] = {}
    clean = _scrub_strings(value, counts)
    return orjson.dumps(clean, default=_json_default).decode(), counts


def _scrub_strings(value: Any, counts: dict[str, int]) -> Any:
    if isinstance(value, str):
        clean, found = scrub(value)
        for kind, n in found.items():
            if n:
                counts[kind] = counts.get(kind, 0) + n
        return clean
    if isinstance(value, dict):
        return {k: _scrub_strings(v, counts) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_strings(v, counts) for v in value]
    return value


def store_sample(session: Session, sample: CapturedSample, retention_days: int) -> RequestSample:
    """Redact and write one sample (idempotent on the request id)."""
    request_text, found = redact(sample.request)
    response_text, found_out = redact(sample.response)
    for kind, count in found_out.items():
        found[kind] = found.get(kind, 0) + count
    row = RequestSample(
        request_id=sample.request_id,
        organization_id=sample.organization_id,
        api_key_id=sample.api_key_id,
        model=sample.model,
        model_version_id=sample.model_version_id,
        endpoint=sample.endpoint,
        request_text=request_text,
        response_text=response_text,
        redactions=found,
        created_at=sample.created_at,
        expires_at=sample.created_at + timedelta(days=retention_days),
    )
    return session.merge(row)


def purge_expired(session: Session, now: datetime | None = None) -> int:
    """Delete every sample past its retention; returns how many."""
    result = session.execute(
        delete(RequestSample).where(RequestSample.expires_at <= (now or utcnow()))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def delete_organization_samples(session: Session, organization_id: str) -> int:
    """Delete an organisation's samples and policies (part of deleting the organisation)."""
    session.execute(
        delete(SampleCapturePolicy).where(SampleCapturePolicy.organization_id == organization_id)
    )
    result = session.execute(
        delete(RequestSample).where(RequestSample.organization_id == organization_id)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- the recorder the gateway feeds -----------------------------------------------------------


class SampleRecorder:
    """Queues samples of opted-in callers and writes them on its own thread."""

    def __init__(
        self,
        database: Database,
        *,
        refresh_s: float = 5.0,
        purge_every_s: float = 3600.0,
        max_queued: int = 10_000,
    ) -> None:
        self._db = database
        self._refresh_s = refresh_s
        self._purge_every_s = purge_every_s
        # Organisation and key ids that opted in -> retention days; replaced whole on
        # refresh, so the gateway's lookup needs no lock.
        self.retention: Mapping[str, int] = {}
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.dropped = 0

    def wants(self, organization_id: str, api_key_id: str) -> bool:
        """Whether a caller opted in (the only cost capture adds when it is off)."""
        retention = self.retention
        return bool(retention) and (organization_id in retention or api_key_id in retention)

    def offer(self, sample: CapturedSample) -> None:
        """Queue a sample; a full queue drops it rather than make the request wait."""
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self.dropped += 1

    def refresh(self) -> None:
        with self._db.session() as session:
            self.retention = _retention_by_subject(session)

    def start(self) -> None:
        try:
            self.refresh()
        except Exception:
            log.exception("loading sample capture policies failed; retrying later")
        self._thread = threading.Thread(target=self._run, name="sample-capture", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        next_refresh = time.monotonic() + self._refresh_s
        next_purge = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, next_refresh - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            now = time.monotonic()
            try:
                if isinstance(item, CapturedSample):
                    self._store([item, *self._drain()])
                # Rescheduled before the work: one that fails (the database is gone)
                # waits its interval too, instead of being retried in a busy loop.
                if now >= next_refresh:
                    next_refresh = now + self._refresh_s
                    self.refresh()
                if now >= next_purge:
                    next_purge = now + self._purge_every_s
                    with self._db.session() as session:
                        purge_expired(session)
            except Exception:
                # Capture is best effort: a failed write must not stop later ones.
                log.exception("storing captured samples failed")

    def _drain(self) -> list[CapturedSample]:
        batch: list[CapturedSample] = []
        while len(batch) < 500:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # seen again by the loop, after this batch
                break
            if isinstance(item, CapturedSample):
                batch.append(item)
        return batch

    def _store(self, batch: list[CapturedSample]) -> None:
        with self._db.session() as session:
            retention = _retention_by_subject(session)
            for sample in batch:
                days = retention.get(sample.api_key_id) or retention.get(sample.organization_id)
                if days is not None:  # opted out since the request was served
                    store_sample(session, sample, days)
                    self.stored += 1
