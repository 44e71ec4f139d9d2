"""Billing alerts delivered to the organisations' webhooks, and where each one's go.

The metering writer stores each threshold alert in ``billing_alerts`` (status
``pending``, due at once) as charges cross it; admission stores the 100 % alert of
a refusal (``charging.alerts``). An ``AlertDispatcher`` POSTs each alert's
``payload`` as JSON to the organisation's ``alert_webhook_url`` (set with
``set_alert_webhook``) and records the outcome on the row:

* ``delivered``: the receiver answered 2xx (``delivered_at`` set);
* ``failed``: ``max_attempts`` attempts failed, or the receiver answered 410 Gone,
  which says the endpoint is gone for good, so retrying cannot help;
* ``unrouted``: the organisation has no webhook URL; the alert stays recorded (for
  the admin API) and is never sent, even if a URL is configured later.

Any other answer, a network error or a timeout (``timeout_s`` for the whole
exchange) is a failed attempt: ``attempts`` grows by one, ``last_error`` holds a
short reason and the next attempt waits ``base_delay_s * 2 ** (attempts - 1)``,
at most an hour. Redirects are not followed: a 3xx is a failed attempt.

Guarantees:

* At-least-once: a receiver may see an alert twice (the process died after the
  POST but before recording it, or the answer was lost), and must de-duplicate on
  the ``X-ModelMint-Alert-Id`` header (the alert id, also the row's key).
* No ordering: alerts are sent concurrently, retries overtake nothing and wait
  for nothing, so a receiver may see a 90 % alert before the 80 % one.
* Several gateway processes may each run a dispatcher on one database. Each
  alert is claimed before it is sent by one conditional UPDATE that pushes
  ``next_attempt_at`` forward by ``claim_s`` (a lease) only if the row still holds
  the value this process read: one process wins, the others see no row changed
  and skip it. A process that dies holding a lease leaves the alert due again once
  the lease runs out, so ``claim_s`` must exceed ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.serialization import Json
from modelmint.billing.store import BillingStore
from modelmint.billing.store.alerts import DueAlert
from modelmint.billing_admin.fields import org_fields
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest
from modelmint.storage.db import Database

__all__ = ["AlertDispatcher", "Clock", "set_alert_webhook"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# A receiver down for a while should not be hammered, nor left for days between tries.
MAX_DELAY_S = 3600.0
# Due alerts read per query: bounds both memory and how many POSTs run at once.
BATCH = 50
# last_error is for an operator's eye, not a copy of a receiver's answer.
MAX_ERROR_CHARS = 300
# On close, how long past timeout_s a pass may take to record what it sent.
CLOSE_GRACE_S = 5.0
_URL_CHARS = 500  # the width of the organisation's webhook column


def set_alert_webhook(session: Session, org: str, url: str | None) -> Json:
    """Where the organisation's billing alerts are POSTed (None: record them only)."""
    organization = accounts.get_org(session, org)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > _URL_CHARS:
            raise InvalidRequest(
                f"the alert webhook must be an http(s) URL of at most {_URL_CHARS} characters",
                param="url",
            )
    organization.alert_webhook_url = url
    session.flush()
    return {**org_fields(organization), "alert_webhook_url": url}


@dataclass(frozen=True, slots=True)
class _Outcome:
    delivered: bool
    error: str = ""
    permanent: bool = False


class AlertDispatcher:
    """Sends due billing alerts to webhooks, in a background loop or one pass at a time.

    ``start()`` runs a pass every ``poll_s`` seconds (sooner after ``nudge()``);
    ``run_once()`` is one pass, for tests and tools. The database is the caller's:
    ``close()`` stops the loop and the HTTP client, never the database.
    """

    def __init__(
        self,
        database: Database,
        *,
        poll_s: float = 1.0,
        max_attempts: int = 8,
        base_delay_s: float = 1.0,
        timeout_s: float = 5.0,
        claim_s: float = 30.0,
        clock: Clock = utcnow,
    ) -> None:
        if poll_s <= 0 or base_delay_s <= 0 or timeout_s <= 0:
            raise ValueError("poll_s, base_delay_s and timeout_s must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        # A lease shorter than a POST could end while the POST is still running, and
        # another process would then send the same alert beside it.
        if claim_s <= timeout_s:
            raise ValueError("claim_s must be longer than timeout_s")
        self.database = database
        self.poll_s = poll_s
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.timeout_s = timeout_s
        self.claim_s = claim_s
        self.clock = clock
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="alert-dispatch")

    async def close(self) -> None:
        """Stop the loop, letting the POSTs in flight finish and be recorded.

        A pass still running after ``timeout_s + CLOSE_GRACE_S`` (a stuck database) is
        cancelled; the alerts it was sending are retried, by any process, once their
        leases end.
        """
        self._loop = None
        task, self._task = self._task, None
        if task is not None:
            # Finishing the pass rather than cancelling it spares receivers duplicates.
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s + CLOSE_GRACE_S)
            if not done:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()
            self._http = None

    def nudge(self) -> None:
        """Start the next pass now instead of after ``poll_s``; safe from any thread."""
        loop = self._loop
        if loop is None:
            return  # not running: the next start() makes a pass anyway
        # The loop may be closing on shutdown; a lost nudge only delays to the next poll.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        while not self._stopping:
            # Cleared before the pass, so a nudge that arrives during it is not lost.
            self._wake.clear()
            try:
                await self.run_once()
            except Exception:
                log.exception("delivering billing alerts failed; retrying later")
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use, inside the running loop, so run_once works without start().
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._http

    # -- one pass ------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Try every alert due now once; returns how many were POSTed.

        Alerts of organisations without a webhook are marked unrouted and not counted;
        alerts another process claimed first are skipped.
        """
        now = self.clock()
        seen: set[str] = set()
        attempted = 0
        while True:
            due = await asyncio.to_thread(self._due, now)
            # A failed alert is due again only after ``now``, so it is not re-read in this
            # pass; ``seen`` also guards against a claim another process set to <= now.
            fresh = [alert for alert in due if alert.id not in seen]
            seen.update(alert.id for alert in fresh)
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._handle(alert)) for alert in fresh]
            attempted += sum(task.result() for task in tasks)
            if len(due) < BATCH or not fresh or self._stopping:
                return attempted

    async def _handle(self, alert: DueAlert) -> bool:
        """Claim, send and record one alert; True if it was POSTed."""
        if alert.url is None:
            await asyncio.to_thread(self._mark_unrouted, alert)
            return False
        lease = await asyncio.to_thread(self._claim, alert)
        if lease is None:
            return False  # another process has it
        outcome = await self._post(alert.id, alert.url, alert.payload)
        if outcome.delivered:
            await asyncio.to_thread(self._record_delivered, alert)
        else:
            await asyncio.to_thread(self._record_failure, alert, lease, outcome)
        return True

    async def _post(self, alert_id: str, url: str, payload: dict[str, Any]) -> _Outcome:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "ModelMint-Alerts",
            "X-ModelMint-Alert-Id": alert_id,
        }
        try:
            body = orjson.dumps(payload)
            # A redirect could send the payload somewhere nobody configured.
            async with self._client().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:  # aiohttp's says nothing; the limit is what an operator needs
            return _Outcome(False, f"TimeoutError: no answer within {self.timeout_s:g} s")
        # Any error is one failed attempt: an alert left unrecorded would keep its lease
        # and be retried forever without anyone seeing why.
        except Exception as exc:
            return _Outcome(False, _describe(exc, url))
        if 200 <= status < 300:
            return _Outcome(True)
        return _Outcome(False, f"HTTP {status}", permanent=status == 410)

    # -- database (sync, run on worker threads) ------------------------------------------

    def _due(self, now: datetime) -> list[DueAlert]:
        with self.database.session() as session:
            return BillingStore(session).alerts.due(now, BATCH)

    def _claim(self, alert: DueAlert) -> datetime | None:
        """Take a lease on the alert; its new ``next_attempt_at``, or None if another
        process changed the row since it was read."""
        lease = self.clock() + timedelta(seconds=self.claim_s)
        with self.database.session() as session:
            claimed = BillingStore(session).alerts.claim(alert.id, alert.next_attempt_at, lease)
            return lease if claimed else None

    def _mark_unrouted(self, alert: DueAlert) -> None:
        with self.database.session() as session:
            BillingStore(session).alerts.unrouted(alert.id, alert.next_attempt_at)

    def _record_delivered(self, alert: DueAlert) -> None:
        # Not conditional on the lease: even if it ran out and another process took the
        # alert, this delivery happened, and recording it spares a further duplicate.
        with self.database.session() as session:
            BillingStore(session).alerts.delivered(alert.id, self.clock())

    def _record_failure(self, alert: DueAlert, lease: datetime, outcome: _Outcome) -> None:
        attempts = alert.attempts + 1
        now = self.clock()
        delay = min(MAX_DELAY_S, self.base_delay_s * 2.0 ** min(attempts - 1, 64))
        gave_up = outcome.permanent or attempts >= self.max_attempts
        with self.database.session() as session:
            # Conditional on our lease: if it ran out and another process took the alert,
            # that process's outcome is the one to keep.
            recorded = BillingStore(session).alerts.attempt_failed(
                alert.id,
                lease,
                gave_up=gave_up,
                attempts=attempts,
                error=outcome.error,
                next_attempt_at=now if gave_up else now + timedelta(seconds=delay),
            )
        if not recorded:
            log.warning(
                "billing alert %s: attempt failed (%s) after its claim expired; not recorded",
                alert.id,
                outcome.error,
            )
        elif gave_up:
            log.warning(
                "billing alert %s: giving up after %d attempts: %s",
                alert.id,
                attempts,
                outcome.error,
            )
        else:
            log.warning(
                "billing alert %s: attempt %d failed (%s); retrying in %.0f s",
                alert.id,
                attempts,
                outcome.error,
                delay,
            )


def _describe(exc: BaseException, url: str) -> str:
    """A short reason for ``last_error`` and the log, without the webhook URL, whose
    path or query often carries the receiver's secret."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "InvalidURL"  # its message is the URL itself
    message = str(exc).replace(url, "<webhook>")
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
