"""Billing alerts as stored: one row per alert, raised once, then delivered or given up.

An alert's id says what it is about (scope, kind, subject, period, threshold), so
raising it again finds the row and adds nothing. Delivery state moves by
conditional UPDATEs whose guard is the ``next_attempt_at`` the deliverer read or
set: a claim on an alert is a lease on that column (see the webhook dispatcher).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Result, select, update

from modelmint.billing.budgets import alert_id
from modelmint.billing.periods import Period
from modelmint.billing.serialization import Json
from modelmint.billing.store.base import StorePart
from modelmint.clock import utcnow
from modelmint.storage.tables import BillingAlert, Organization

__all__ = [
    "ALERT_STATUSES",
    "DELIVERED",
    "FAILED",
    "PENDING",
    "UNROUTED",
    "AlertStore",
    "DueAlert",
    "StoredAlert",
]

# Pending: to be sent (or being sent, under a claim); delivered: a 2xx answer; failed:
# given up; unrouted: the organisation has no webhook, so it is recorded only.
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
UNROUTED = "unrouted"
ALERT_STATUSES = (PENDING, DELIVERED, FAILED, UNROUTED)


@dataclass(frozen=True, slots=True)
class DueAlert:
    """A due alert as read, before it is claimed."""

    id: str
    next_attempt_at: datetime  # the compare-and-set token of the claim
    attempts: int
    payload: dict[str, Any]
    url: str | None  # the organisation's webhook; None: it has none


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """An alert with its delivery state, for people to read."""

    id: str
    organization_id: str
    organization: str  # the organisation's name
    api_key_id: str
    kind: str
    subject: str
    threshold: int
    period_start: datetime
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


class AlertStore(StorePart):
    """Alert rows: raising them, listing them, and their delivery state."""

    def raise_alert(
        self,
        organization_id: str,
        *,
        api_key_id: str,
        kind: str,
        subject: str,
        period: Period,
        threshold: int,
        payload: Json,
    ) -> str | None:
        """Record an alert once per (scope, kind, subject, period, threshold); returns its id,
        or None if it was raised before. Call under the organisation's usage lock."""
        alert = alert_id(organization_id, api_key_id, kind, subject, period, threshold)
        now = utcnow()
        added = self.add(
            alert,
            organization_id,
            api_key_id=api_key_id,
            kind=kind,
            subject=subject,
            period_start=period.start,
            threshold=threshold,
            payload={"id": alert, **payload},
            now=now,
        )
        if not added:
            return None
        self._flush(f"alert {alert} raised concurrently")
        return alert

    def add(
        self,
        alert: str,
        organization_id: str,
        *,
        api_key_id: str,
        kind: str,
        subject: str,
        period_start: datetime,
        threshold: int,
        payload: Json,
        now: datetime,
    ) -> bool:
        """Add alert ``alert``, due at once, unless it exists; False if it did (not flushed)."""
        if self._session.get(BillingAlert, alert) is not None:
            return False
        self._session.add(
            BillingAlert(
                id=alert,
                organization_id=organization_id,
                api_key_id=api_key_id,
                kind=kind,
                subject=subject,
                period_start=period_start,
                threshold=threshold,
                payload=payload,
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        return True

    def listing(
        self, organization_id: str | None, status: str | None, limit: int
    ) -> list[StoredAlert]:
        """Alerts newest first, of one organisation and in one status if given."""
        query = select(BillingAlert, Organization.name).join(
            Organization, Organization.id == BillingAlert.organization_id
        )
        if organization_id is not None:
            query = query.where(BillingAlert.organization_id == organization_id)
        if status is not None:
            query = query.where(BillingAlert.status == status)
        query = query.order_by(BillingAlert.created_at.desc(), BillingAlert.id).limit(limit)
        return [
            StoredAlert(
                id=a.id,
                organization_id=a.organization_id,
                organization=name,
                api_key_id=a.api_key_id,
                kind=a.kind,
                subject=a.subject,
                threshold=a.threshold,
                period_start=a.period_start,
                status=a.status,
                attempts=a.attempts,
                last_error=a.last_error,
                created_at=a.created_at,
                delivered_at=a.delivered_at,
                payload=a.payload,
            )
            for a, name in self._session.execute(query).all()
        ]

    # -- delivery --------------------------------------------------------------------------

    def due(self, now: datetime, limit: int) -> list[DueAlert]:
        """Up to ``limit`` pending alerts due at ``now``, the longest due first."""
        rows = self._session.execute(
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
            .limit(limit)
        ).all()
        return [DueAlert(*row) for row in rows]

    def claim(self, alert: str, due_at: datetime, lease: datetime) -> bool:
        """Push a pending alert's ``next_attempt_at`` from ``due_at`` (as read) to ``lease``;
        False if another process changed it first."""
        return self._move(alert, due_at, next_attempt_at=lease)

    def unrouted(self, alert: str, due_at: datetime) -> None:
        """Mark a pending alert unrouted (its organisation has no webhook)."""
        self._move(alert, due_at, status=UNROUTED)

    def delivered(self, alert: str, at: datetime) -> None:
        """Record a delivery, whoever holds the claim now (it happened either way)."""
        self._session.execute(
            update(BillingAlert)
            .where(BillingAlert.id == alert, BillingAlert.status == PENDING)
            .values(status=DELIVERED, delivered_at=at, attempts=BillingAlert.attempts + 1)
        )

    def attempt_failed(
        self,
        alert: str,
        lease: datetime,
        *,
        gave_up: bool,
        attempts: int,
        error: str,
        next_attempt_at: datetime,
    ) -> bool:
        """Record a failed attempt made under the claim ``lease``; False if the claim ran
        out and another process took the alert (its outcome is the one to keep)."""
        return self._move(
            alert,
            lease,
            status=FAILED if gave_up else PENDING,
            attempts=attempts,
            last_error=error,
            next_attempt_at=next_attempt_at,
        )

    def _move(self, alert: str, due_at: datetime, **values: object) -> bool:
        result = self._session.execute(
            update(BillingAlert)
            .where(
                BillingAlert.id == alert,
                BillingAlert.status == PENDING,
                BillingAlert.next_attempt_at == due_at,
            )
            .values(**values)
        )
        return _rowcount(result) == 1


def _rowcount(result: Result[Any]) -> int:
    # DML results are CursorResults, which Session.execute does not say in its type.
    count = getattr(result, "rowcount", -1)
    return count if isinstance(count, int) else -1
