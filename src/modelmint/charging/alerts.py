"""Billing alerts: the exhausted alert of a refusal, and delivery to the organisations' webhooks.

The metering writer stores each threshold alert in ``billing_alerts`` (status
``pending``, due at once) as charges cross it; ``ExhaustedAlerts`` stores the 100 %
alert of a hard budget or a wallet when admission refuses a request for it (see
there). An ``AlertDispatcher`` POSTs each alert's ``payload`` as JSON to the
organisation's ``alert_webhook_url`` and records the outcome on the row:

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

import aiohttp
import orjson
from sqlalchemy import Result, select, update

from modelmint.billing.errors import BudgetExceeded, InsufficientCredit
from modelmint.billing.periods import Period
from modelmint.billing.repository import BillingRepository
from modelmint.charging.settlement import announce, threshold_alert
from modelmint.clock import utcnow
from modelmint.errors import Conflict
from modelmint.storage.db import Database
from modelmint.storage.tables import BillingAlert, BillingWallet, Organization

__all__ = ["EXHAUSTED", "AlertDispatcher", "Clock", "ExhaustedAlerts"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
UNROUTED = "unrouted"

# A receiver down for a while should not be hammered, nor left for days between tries.
MAX_DELAY_S = 3600.0
# Due alerts read per query: bounds both memory and how many POSTs run at once.
BATCH = 50
# last_error is for an operator's eye, not a copy of a receiver's answer.
MAX_ERROR_CHARS = 300
# On close, how long past timeout_s a pass may take to record what it sent.
CLOSE_GRACE_S = 5.0


# The threshold (percent) a refusal raises: the budget or the credit is used up for
# this request's purpose, whatever share of it was charged.
EXHAUSTED = 100
# Scopes remembered as alerted, per process; past this many the memory starts afresh
# (the database still raises each alert once).
_MAX_REMEMBERED = 10_000

# (organisation, key scope, kind, subject, month start): one exhausted alert each.
_Target = tuple[str, str, str, str, datetime]


class ExhaustedAlerts:
    """Raises the 100 % alert of a hard budget or a prepaid wallet that refuses a request.

    Admission refuses a request whose worst-case cost no longer fits, usually before
    the charges reach 100 %, and then they never do: settlement, which raises
    thresholds as charges cross them, would never raise the 100 % alert. A refusal
    raises it instead: the same alert (same id) settlement would raise, so it is raised
    once per scope and month however many refusals, processes or charges reach it.
    Each process remembers what it raised: only its first refusal per scope and month
    costs a database write.
    """

    def __init__(self, database: Database) -> None:
        self._database = database
        self._raised: set[_Target] = set()

    async def refused(
        self, organization_id: str, refusal: BudgetExceeded | InsufficientCredit
    ) -> None:
        """Raise the alert ``refusal`` calls for. Never raises: the request stays a 402
        whatever happens here, and a failed write is retried at the next refusal."""
        target = _target(organization_id, refusal)
        if target is None or target in self._raised:
            return
        if len(self._raised) >= _MAX_REMEMBERED:
            self._raised.clear()
        self._raised.add(target)  # before the write: concurrent refusals write once
        try:
            await asyncio.to_thread(self._raise, target, refusal)
        except Exception:
            self._raised.discard(target)
            log.exception("raising the exhausted alert of %s failed", organization_id)

    def _raise(self, target: _Target, refusal: BudgetExceeded | InsufficientCredit) -> None:
        organization_id, scope, kind, subject, start = target
        period = Period.containing(start)
        try:
            with self._database.session() as session:
                repo = BillingRepository(session)
                if isinstance(refusal, BudgetExceeded):
                    assert refusal.limit is not None and refusal.charged is not None
                    limit, used = refusal.limit, refusal.charged
                    details: dict[str, object] = {"currency": refusal.currency, "hard": True}
                else:
                    wallet = session.scalar(
                        select(BillingWallet.id).where(
                            BillingWallet.organization_id == organization_id,
                            BillingWallet.currency == subject,
                        )
                    )
                    if wallet is None:
                        return  # no credit was ever granted: nothing ran out
                    limit, used = repo.wallet_usage(wallet)
                    details = {"currency": subject}
                alert = threshold_alert(
                    organization_id, scope, kind, subject, period, EXHAUSTED, utcnow(),
                    used=used, limit=limit, reason="refused", **details,
                )  # fmt: skip
                raised = repo.raise_alert(
                    organization_id,
                    api_key_id=scope,
                    kind=kind,
                    subject=subject,
                    period=period,
                    threshold=EXHAUSTED,
                    payload=alert["payload"],
                )
        except Conflict:
            return  # another process raised it at the same moment
        if raised is not None:
            announce([alert], {raised})


def _target(organization_id: str, refusal: BudgetExceeded | InsufficientCredit) -> _Target | None:
    """The alert a refusal raises, or None if it does not say which budget or wallet."""
    if isinstance(refusal, BudgetExceeded):
        if refusal.limit is None or refusal.charged is None or refusal.period_start is None:
            return None
        return (organization_id, refusal.scope, "budget", "", refusal.period_start)
    if refusal.currency is None:
        return None
    month = Period.containing(utcnow()).start
    return (organization_id, "", "credit", refusal.currency, month)


@dataclass(frozen=True, slots=True)
class _Due:
    """A due alert as read, before it is claimed."""

    id: str
    next_attempt_at: datetime  # the compare-and-set token of the claim
    attempts: int
    payload: dict[str, Any]
    url: str | None


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

    async def _handle(self, alert: _Due) -> bool:
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

    def _due(self, now: datetime) -> list[_Due]:
        with self.database.session() as session:
            rows = session.execute(
                select(
                    BillingAlert.id,
                    BillingAlert.next_attempt_at,
                    BillingAlert.attempts,
                    BillingAlert.payload,
                    Organization.alert_webhook_url,
                )
                .join(Organization, Organization.id == BillingAlert.organization_id)
                .where(BillingAlert.status == PENDING, BillingAlert.next_attempt_at <= now)
                .order_by(BillingAlert.next_attempt_at, BillingAlert.id)
                .limit(BATCH)
            ).all()
        return [_Due(*row) for row in rows]

    def _claim(self, alert: _Due) -> datetime | None:
        """Take a lease on the alert; its new ``next_attempt_at``, or None if another
        process changed the row since it was read."""
        lease = self.clock() + timedelta(seconds=self.claim_s)
        with self.database.session() as session:
            result = session.execute(
                update(BillingAlert)
                .where(
                    BillingAlert.id == alert.id,
                    BillingAlert.status == PENDING,
                    BillingAlert.next_attempt_at == alert.next_attempt_at,
                )
                .values(next_attempt_at=lease)
            )
            return lease if _rowcount(result) == 1 else None

    def _mark_unrouted(self, alert: _Due) -> None:
        with self.database.session() as session:
            session.execute(
                update(BillingAlert)
                .where(
                    BillingAlert.id == alert.id,
                    BillingAlert.status == PENDING,
                    BillingAlert.next_attempt_at == alert.next_attempt_at,
                )
                .values(status=UNROUTED)
            )

    def _record_delivered(self, alert: _Due) -> None:
        # Not conditional on the lease: even if it ran out and another process took the
        # alert, this delivery happened, and recording it spares a further duplicate.
        with self.database.session() as session:
            session.execute(
                update(BillingAlert)
                .where(BillingAlert.id == alert.id, BillingAlert.status == PENDING)
                .values(
                    status=DELIVERED,
                    delivered_at=self.clock(),
                    attempts=BillingAlert.attempts + 1,
                )
            )

    def _record_failure(self, alert: _Due, lease: datetime, outcome: _Outcome) -> None:
        attempts = alert.attempts + 1
        now = self.clock()
        delay = min(MAX_DELAY_S, self.base_delay_s * 2.0 ** min(attempts - 1, 64))
        gave_up = outcome.permanent or attempts >= self.max_attempts
        with self.database.session() as session:
            # Conditional on our lease: if it ran out and another process took the alert,
            # that process's outcome is the one to keep.
            result = session.execute(
                update(BillingAlert)
                .where(
                    BillingAlert.id == alert.id,
                    BillingAlert.status == PENDING,
                    BillingAlert.next_attempt_at == lease,
                )
                .values(
                    status=FAILED if gave_up else PENDING,
                    attempts=attempts,
                    last_error=outcome.error,
                    next_attempt_at=now if gave_up else now + timedelta(seconds=delay),
                )
            )
            recorded = _rowcount(result) == 1
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


def _rowcount(result: Result[Any]) -> int:
    # DML results are CursorResults, which Session.execute does not say in its type.
    count = getattr(result, "rowcount", -1)
    return count if isinstance(count, int) else -1


def _describe(exc: BaseException, url: str) -> str:
    """A short reason for ``last_error`` and the log, without the webhook URL, whose
    path or query often carries the receiver's secret."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "InvalidURL"  # its message is the URL itself
    message = str(exc).replace(url, "<webhook>")
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_CHARS]
