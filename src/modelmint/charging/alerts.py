"""Billing alerts raised on the request path: threshold alerts and the exhausted alert.

``threshold_alert`` builds the row of an alert that charges crossing a threshold
raise (settlement, lease upkeep and budget changes all raise them the same way, so
one alert has one id wherever it is raised) and ``announce`` counts and logs the
ones a transaction stored for the first time. ``ExhaustedAlerts`` stores the 100 %
alert of a hard budget or a wallet when admission refuses a request for it (see
there). Delivery to the organisations' webhooks is ``billing_admin.webhooks``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from modelmint.billing.budgets import alert_id
from modelmint.billing.errors import BudgetExceeded, InsufficientCredit
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.clock import utcnow
from modelmint.errors import Conflict
from modelmint.observability.metrics import BILLING_ALERTS
from modelmint.storage.db import Database

__all__ = ["EXHAUSTED", "ExhaustedAlerts", "announce", "threshold_alert"]

log = logging.getLogger(__name__)


def threshold_alert(
    organization_id: str,
    api_key_id: str,
    kind: str,
    subject: str,
    period: Period,
    percent: int,
    now: datetime,
    *,
    used: Decimal,
    limit: Decimal,
    **details: object,
) -> dict[str, Any]:
    """An alert row, raised once per (scope, kind, subject, period, threshold): its id is
    derived from those, so a second raise is skipped by the insert."""
    alert = alert_id(organization_id, api_key_id, kind, subject, period, percent)
    payload: dict[str, object] = {
        "id": alert,
        "type": f"{kind}.threshold",
        "organization_id": organization_id,
        "api_key_id": api_key_id or None,
        "period": str(period),
        "threshold_percent": percent,
        "used": f"{used:f}",
        "limit": f"{limit:f}",
        "raised_at": now.isoformat(),
    }
    if subject and kind == "allowance":
        payload["metric"] = subject
    payload.update({k: v for k, v in details.items() if v is not None})
    return {
        "id": alert,
        "organization_id": organization_id,
        "api_key_id": api_key_id,
        "kind": kind,
        "subject": subject,
        "period_start": period.start,
        "threshold": percent,
        "payload": payload,
        "created_at": now,
    }


def announce(alerts: Sequence[dict[str, Any]], stored: set[str]) -> None:
    """Count and log the alerts a committed batch raised for the first time."""
    for alert in alerts:
        if alert["id"] not in stored:
            continue
        BILLING_ALERTS.labels(alert["kind"]).inc()
        payload = alert["payload"]
        log.warning(
            "billing alert: %s of %s at %d%% (%s of %s)",
            alert["kind"],
            alert["api_key_id"] or alert["organization_id"],
            alert["threshold"],
            payload["used"],
            payload["limit"],
        )


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
                store = BillingStore(session)
                if isinstance(refusal, BudgetExceeded):
                    assert refusal.limit is not None and refusal.charged is not None
                    limit, used = refusal.limit, refusal.charged
                    details: dict[str, object] = {"currency": refusal.currency, "hard": True}
                else:
                    wallet = store.wallets.wallet_id(organization_id, subject)
                    if wallet is None:
                        return  # no credit was ever granted: nothing ran out
                    limit, used = store.wallets.wallet_usage(wallet)
                    details = {"currency": subject}
                alert = threshold_alert(
                    organization_id, scope, kind, subject, period, EXHAUSTED, utcnow(),
                    used=used, limit=limit, reason="refused", **details,
                )  # fmt: skip
                raised = store.alerts.raise_alert(
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
