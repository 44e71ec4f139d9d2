"""How collection stands, read from the payment tables alone (no provider call): for the
admin API and CLI, and for the dashboard, which shows it even with payments turned off."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.money import Money
from modelmint.billing.serialization import Json
from modelmint.errors import NotFound
from modelmint.storage.tables import Organization, Payment, PaymentAccount, PaymentEvent

__all__ = [
    "account",
    "account_json",
    "accounts_by_organization",
    "invoice_payments",
    "iso",
    "payment",
    "payment_json",
    "payments",
]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def payment_json(row: Payment) -> Json:
    money = Money.from_minor_units(row.amount_minor, row.currency)
    return {
        "id": row.id,
        "organization_id": row.organization_id,
        "kind": row.kind,
        "invoice_id": row.invoice_id,
        "amount": f"{money.amount:f}",
        "amount_minor": row.amount_minor,
        "currency": row.currency,
        "status": row.status,
        "attempts": row.attempts,
        "intent_id": row.intent_id,
        "failure": row.failure,
        # A refund is the credit note of a refunded invoice.
        "refund_id": row.refund_id,
        "next_attempt_at": iso(row.next_attempt_at),
        "first_failed_at": iso(row.first_failed_at),
        "succeeded_at": iso(row.succeeded_at),
        "created_at": iso(row.created_at),
    }


def account_json(organization: Organization, row: PaymentAccount | None) -> Json:
    auto = None
    if row is not None and row.auto_top_up_below is not None and row.auto_top_up_amount is not None:
        auto = {
            "below": f"{row.auto_top_up_below:f}",
            "amount": f"{row.auto_top_up_amount:f}",
            "currency": row.auto_top_up_currency,
        }
    return {
        "organization_id": organization.id,
        "organization": organization.name,
        "provider": row.provider if row else None,
        "customer_id": row.customer_id if row else None,
        "payment_method": row.payment_method_id if row else None,
        "payment_method_label": row.method_label if row else None,
        "blocked_at": iso(row.blocked_at) if row else None,
        "auto_top_up": auto,
    }


def account(session: Session, org: str) -> Json:
    """The organisation's payment account and every payment of it, oldest first."""
    organization = accounts.get_org(session, org)
    result = account_json(organization, session.get(PaymentAccount, organization.id))
    result["payments"] = [payment_json(p) for p in _rows(session, organization_id=organization.id)]
    return result


def accounts_by_organization(session: Session) -> dict[str, PaymentAccount]:
    return {row.organization_id: row for row in session.scalars(select(PaymentAccount))}


def payment(session: Session, payment_id: str) -> Json:
    """The payment, with the provider's events applied to it, oldest first."""
    row = session.get(Payment, payment_id)
    if row is None:
        raise NotFound(f"no payment {payment_id!r}", param="payment")
    events = session.scalars(
        select(PaymentEvent)
        .where(PaymentEvent.payment_id == payment_id)
        .order_by(PaymentEvent.received_at, PaymentEvent.id)
    )
    return {
        **payment_json(row),
        "events": [
            {"id": e.id, "type": e.type, "outcome": e.outcome, "received_at": iso(e.received_at)}
            for e in events
        ],
    }


def payments(session: Session, *, org: str | None = None, state: str | None = None) -> list[Json]:
    """Payments, oldest first, each with its organisation's name."""
    organization_id = accounts.get_org(session, org).id if org else None
    names = {o.id: o.name for o in accounts.list_orgs(session)}
    return [
        {**payment_json(p), "organization": names.get(p.organization_id)}
        for p in _rows(session, organization_id=organization_id, state=state)
    ]


def invoice_payments(session: Session, invoice_ids: Sequence[str]) -> dict[str, Json]:
    """The collection of each invoice that has one (an invoice has at most one payment)."""
    if not invoice_ids:
        return {}
    rows = session.scalars(
        select(Payment).where(Payment.invoice_id.in_(list(invoice_ids)), Payment.kind == "invoice")
    )
    return {row.invoice_id: payment_json(row) for row in rows if row.invoice_id is not None}


def _rows(
    session: Session, *, organization_id: str | None = None, state: str | None = None
) -> list[Payment]:
    query = select(Payment).order_by(Payment.created_at, Payment.id)
    if organization_id is not None:
        query = query.where(Payment.organization_id == organization_id)
    if state is not None:
        query = query.where(Payment.status == state)
    return list(session.scalars(query))
