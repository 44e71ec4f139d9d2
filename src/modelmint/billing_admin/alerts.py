"""Billing alerts for people: what was raised, for whom, and how its delivery went."""

from __future__ import annotations

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.serialization import Json
from modelmint.billing.store import BillingStore
from modelmint.billing.store.alerts import ALERT_STATUSES, StoredAlert
from modelmint.billing_admin.fields import iso
from modelmint.errors import InvalidRequest

__all__ = ["ALERT_STATUSES", "list_alerts"]


def list_alerts(
    session: Session, org: str | None = None, status: str | None = None, limit: int = 100
) -> list[Json]:
    """Alerts, newest first."""
    organization_id = None if org is None else accounts.get_org(session, org).id
    if status is not None and status not in ALERT_STATUSES:
        raise InvalidRequest(
            f"alert status is one of {', '.join(ALERT_STATUSES)}, not {status!r}",
            param="status",
        )
    if not 1 <= limit <= 10_000:
        raise InvalidRequest("limit must be within 1..10000", param="limit")
    alerts = BillingStore(session).alerts.listing(organization_id, status, limit)
    return [_alert(alert) for alert in alerts]


def _alert(alert: StoredAlert) -> Json:
    return {
        "id": alert.id,
        "organization_id": alert.organization_id,
        "organization": alert.organization,
        "api_key_id": alert.api_key_id or None,
        "kind": alert.kind,
        # What an allowance alert counts (budget and credit alerts count money).
        "metric": alert.subject if alert.kind == "allowance" else None,
        "threshold": alert.threshold,
        "period": f"{alert.period_start:%Y-%m}",
        "status": alert.status,
        "attempts": alert.attempts,
        "last_error": alert.last_error,
        "created_at": iso(alert.created_at),
        "delivered_at": iso(alert.delivered_at),
        "payload": alert.payload,
    }
