"""Billing operations for people: what the admin API and the CLI both call.

Each function is one unit of work on the caller's ``Session``: it validates its
input, loads what it needs through ``BillingRepository``, applies the domain rule
and flushes; the caller commits (or rolls back on any error, so a failed
operation leaves nothing half-written). Results are JSON-ready dicts: amounts as
plain-notation decimal strings, instants as ISO 8601.

Organisations are named by name or id. Amounts, percentages and tax rates are
taken as strings only: a float (or a JSON number parsed into one) is not exact,
so it is refused with a billing error rather than silently rounded.

    with database.session() as session:
        publish_plan(session, json.loads(Path("starter.json").read_text()))
        subscribe(session, "acme", "starter")
        grant_credit(session, "acme", "25.00", "USD", kind="paid", reference="pay_123")
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.coupons import AmountOff
from modelmint.billing.errors import (
    CurrencyMismatch,
    InvalidCoupon,
    InvalidMoney,
    InvalidPlan,
    InvalidTaxRate,
    InvalidWalletOperation,
)
from modelmint.billing.exact import EXACT, to_decimal
from modelmint.billing.invoices import InvoiceStatus
from modelmint.billing.money import Money
from modelmint.billing.periods import Period
from modelmint.billing.plans import (
    Plan,
    PlanRef,
)
from modelmint.billing.repository import BillingRepository
from modelmint.billing.serialization import (
    Json,
    coupon_from_dict,
    coupon_to_dict,
    decimal_text,
    plan_from_dict,
    plan_to_dict,
)
from modelmint.billing.subscriptions import Subscription
from modelmint.billing.tax import TaxRate
from modelmint.billing.wallet import CreditGrant, GrantKind, Wallet
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, ModelMintError, NotFound
from modelmint.storage.tables import (
    BillingCoupon,
    BillingCouponRedemption,
    BillingInvoice,
    BillingPlanVersion,
    BillingWallet,
    Organization,
)

__all__ = [
    "MAX_LEDGER_LIMIT",
    "cancel",
    "change_plan",
    "create_coupon",
    "currency_code",
    "decimal_string",
    "grant_credit",
    "invoice_csv",
    "iso",
    "list_coupons",
    "list_invoices",
    "list_plans",
    "list_subscriptions",
    "open_wallet",
    "org_fields",
    "pay_invoice",
    "publish_plan",
    "redeem_coupon",
    "set_tax_rate",
    "show_invoice",
    "show_plan",
    "subscribe",
    "void_invoice",
    "wallet_balance",
    "wallet_currencies",
    "wallet_ledger",
]

# Column widths of the storage tables: refused up front with a billing error, because
# PostgreSQL would otherwise fail the insert with an opaque 500.
_CODE_CHARS = 100
_NAME_CHARS = 100
_REFERENCE_CHARS = 200
# Grant priorities live in a 32-bit integer column.
_PRIORITY_LIMIT = 2**31 - 1
MAX_LEDGER_LIMIT = 10_000


# -- input and output helpers ---------------------------------------------------------------


def iso(instant: datetime | None) -> str | None:
    return None if instant is None else instant.isoformat()


def decimal_string(value: object, what: str, error: type[ModelMintError]) -> Decimal:
    """A decimal from a string only: a float is inexact and an int is a likely slip."""
    if not isinstance(value, str):
        hint = "; floats are not exact" if isinstance(value, float) else ""
        raise error(
            f'{what} must be a decimal string such as "5.00", got {type(value).__name__}{hint}',
            param=what,
        )
    return to_decimal(value, what=what, error=error)


def currency_code(currency: object) -> str:
    if not isinstance(currency, str):
        raise InvalidMoney(f"currency must be a code such as 'USD', got {currency!r}")
    return Money.zero(currency).currency


def _month(period: Period) -> str:
    return f"{period.start:%Y-%m}"


def org_fields(org: Organization) -> Json:
    return {"organization_id": org.id, "organization": org.name}


# -- plans ----------------------------------------------------------------------------------


def _plan_summary(plan: Plan, versions: int) -> Json:
    return {
        "code": plan.code,
        "kind": plan.kind.value,
        "version": plan.version,
        "versions": versions,
        "currency": plan.currency,
        "fixed_fee": decimal_text(plan.fixed_fee.amount),
    }


def publish_plan(session: Session, document: Mapping[str, Any]) -> Json:
    """Publish a plan version (the format of ``serialization.plan_from_dict``).

    Version 1 of a new code, or exactly the next version of an existing one
    (``PlanVersionConflict`` otherwise): published versions never change.
    """
    plan = plan_from_dict(document)
    if len(plan.code) > _CODE_CHARS:
        raise InvalidPlan(f"plan code is longer than {_CODE_CHARS} characters", param="code")
    BillingRepository(session).publish_plan(plan)
    return plan_to_dict(plan)


def list_plans(session: Session) -> list[Json]:
    """Each plan code's latest version, with how many versions it has."""
    rows = session.execute(
        select(
            BillingPlanVersion.code,
            func.max(BillingPlanVersion.version),
            func.count(BillingPlanVersion.id),
        )
        .group_by(BillingPlanVersion.code)
        .order_by(BillingPlanVersion.code)
    ).all()
    repo = BillingRepository(session)
    return [_plan_summary(repo.load_plan(code, latest), count) for code, latest, count in rows]


def show_plan(session: Session, code: str, version: int | None = None) -> Json:
    """One plan version (the latest when ``version`` is None), as publishable JSON."""
    return plan_to_dict(BillingRepository(session).load_plan(code, version))


# -- subscriptions --------------------------------------------------------------------------


def _subscription(org: Organization, subscription: Subscription, now: datetime) -> Json:
    if subscription.active_at(now):
        status = "active"
    elif subscription.start > now:
        status = "scheduled"
    else:
        status = "ended"
    plan = subscription.plan
    return {
        **org_fields(org),
        "plan": str(plan.ref),
        "plan_code": plan.code,
        "plan_version": plan.version,
        "kind": plan.kind.value,
        "currency": plan.currency,
        "starts_at": iso(subscription.start),
        "ends_at": iso(subscription.end),
        "status": status,
    }


def _plan_ref(repo: BillingRepository, code: str, version: int | None) -> PlanRef:
    return PlanRef(code, version) if version is not None else repo.load_plan(code).ref


def subscribe(
    session: Session,
    org: str,
    plan_code: str,
    version: int | None = None,
    at: datetime | None = None,
) -> Json:
    """Start the organisation on a plan (latest version unless given) at ``at`` (now)."""
    return _put_on_plan(session, org, plan_code, version, at, change=False)


def change_plan(
    session: Session,
    org: str,
    plan_code: str,
    version: int | None = None,
    at: datetime | None = None,
) -> Json:
    """Move the organisation to another plan at ``at`` (now); the old fee is prorated."""
    return _put_on_plan(session, org, plan_code, version, at, change=True)


def _put_on_plan(
    session: Session,
    org: str,
    plan_code: str,
    version: int | None,
    at: datetime | None,
    *,
    change: bool,
) -> Json:
    organization = accounts.get_org(session, org)
    repo = BillingRepository(session)
    start = repo.change_plan if change else repo.subscribe
    subscription = start(organization.id, _plan_ref(repo, plan_code, version), at or utcnow())
    return _subscription(organization, subscription, utcnow())


def cancel(session: Session, org: str, at: datetime | None = None) -> Json:
    """End the organisation's current subscription at ``at`` (now)."""
    organization = accounts.get_org(session, org)
    ended = BillingRepository(session).cancel(organization.id, at or utcnow())
    return _subscription(organization, ended, utcnow())


def list_subscriptions(session: Session, org: str) -> list[Json]:
    """The organisation's subscriptions, oldest first."""
    organization = accounts.get_org(session, org)
    timeline = BillingRepository(session).timeline(organization.id)
    now = utcnow()
    return [_subscription(organization, s, now) for s in timeline.subscriptions]


# -- wallets --------------------------------------------------------------------------------


def wallet_currencies(session: Session, organization_id: str) -> list[str]:
    return list(
        session.scalars(
            select(BillingWallet.currency)
            .where(BillingWallet.organization_id == organization_id)
            .order_by(BillingWallet.currency)
        )
    )


def _wallet_currency(session: Session, org: Organization, currency: str | None) -> str:
    """``currency`` checked, or the organisation's only wallet currency when it is None."""
    if currency is not None:
        return currency_code(currency)
    currencies = wallet_currencies(session, org.id)
    if not currencies:
        raise NotFound(f"organisation {org.name!r} has no wallet", param="wallet")
    if len(currencies) > 1:
        raise InvalidRequest(
            f"organisation {org.name!r} has wallets in {', '.join(currencies)}; name a currency",
            param="currency",
        )
    return currencies[0]


def _grant(wallet: Wallet, grant: CreditGrant) -> Json:
    return {
        "id": grant.id,
        "kind": grant.kind.value,
        "amount": decimal_text(grant.amount.amount),
        "remaining": decimal_text(wallet.remaining(grant.id).amount),
        "priority": grant.priority,
        "granted_at": iso(grant.granted_at),
        "expires_at": iso(grant.expires_at),
    }


def _wallet(
    org: Organization,
    wallet: Wallet,
    held: Decimal = Decimal(0),
    leased: Decimal = Decimal(0),
    pending: Decimal = Decimal(0),
) -> Json:
    """``held``: credit the gateway holds for requests in flight (beside the ledger);
    ``leased``: credit gateway processes set aside to admit requests against, of which
    ``pending`` was consumed and is being posted to the ledger (within a second)."""
    ordered = sorted(wallet.grants, key=lambda g: g.spend_order)
    unspent = EXACT.subtract(leased, pending)
    reserved = EXACT.add(EXACT.add(wallet.reserved.amount, held), unspent)
    available = EXACT.subtract(wallet.available(utcnow()).amount, EXACT.add(held, leased))
    return {
        **org_fields(org),
        "wallet_id": wallet.id,
        "currency": wallet.currency,
        "balance": decimal_text(EXACT.subtract(wallet.balance.amount, pending)),
        "reserved": decimal_text(reserved),
        "leased": decimal_text(unspent),
        "pending": decimal_text(pending),
        "available": decimal_text(max(available, Decimal(0))),
        "grants": [_grant(wallet, g) for g in ordered],  # in the order they are spent
    }


def _wallet_of(org: Organization, wallet: Wallet, repo: BillingRepository) -> Json:
    return _wallet(
        org,
        wallet,
        repo.credit_held(wallet.id),
        repo.credit_leased(wallet.id),
        repo.credit_pending(wallet.id),
    )


def open_wallet(session: Session, org: str, currency: str) -> Json:
    """An empty wallet in ``currency``; ``Conflict`` if the organisation has one."""
    organization = accounts.get_org(session, org)
    wallet = BillingRepository(session).open_wallet(organization.id, currency_code(currency))
    return _wallet(organization, wallet)


def _grant_kind(kind: str) -> GrantKind:
    try:
        return GrantKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in GrantKind)
        raise InvalidWalletOperation(
            f"grant kind {kind!r} is not one of {choices}", param="kind"
        ) from None


def grant_credit(
    session: Session,
    org: str,
    amount: str,
    currency: str,
    kind: str = "promotional",
    priority: int | None = None,
    expires_at: datetime | None = None,
    reference: str | None = None,
) -> Json:
    """Add credit to the organisation's wallet in ``currency``, opening it if needed.

    ``kind="paid"`` is a top-up (credit bought); promotional credit is spent first by
    default. Returns the new grant and the wallet after it.
    """
    organization = accounts.get_org(session, org)
    # Everything is checked before the first write, so bad input never opens a wallet.
    value = Money(decimal_string(amount, "amount", InvalidMoney), currency_code(currency))
    if value.is_negative or value.is_zero:
        raise InvalidWalletOperation(f"a grant must be positive, got {value}", param="amount")
    grant_kind = _grant_kind(kind)
    if priority is not None and not -_PRIORITY_LIMIT <= priority <= _PRIORITY_LIMIT:
        raise InvalidWalletOperation(f"priority {priority} is out of range", param="priority")
    if reference is not None and len(reference) > _REFERENCE_CHARS:
        raise InvalidWalletOperation(
            f"reference is longer than {_REFERENCE_CHARS} characters", param="reference"
        )
    repo = BillingRepository(session)
    if value.currency in wallet_currencies(session, organization.id):
        wallet = repo.load_wallet(organization.id, value.currency, for_update=True)
    else:
        wallet = repo.open_wallet(organization.id, value.currency)
    grant = wallet.grant(
        value,
        at=utcnow(),
        kind=grant_kind,
        priority=priority,
        expires_at=expires_at,
        reference=reference,
    )
    repo.save_wallet(wallet)
    return {
        "grant": _grant(wallet, grant),
        "wallet": _wallet_of(organization, wallet, repo),
    }


def wallet_balance(session: Session, org: str, currency: str | None = None) -> Json:
    """Balance, reserved and available credit now, and each grant's remainder."""
    organization = accounts.get_org(session, org)
    code = _wallet_currency(session, organization, currency)
    repo = BillingRepository(session)
    wallet = repo.load_wallet(organization.id, code)
    return _wallet_of(organization, wallet, repo)


def wallet_ledger(
    session: Session, org: str, currency: str | None = None, limit: int = 100
) -> Json:
    """The newest ``limit`` ledger entries of the wallet, oldest of them first."""
    if not 1 <= limit <= MAX_LEDGER_LIMIT:
        raise InvalidRequest(f"limit must be 1..{MAX_LEDGER_LIMIT}, got {limit}", param="limit")
    organization = accounts.get_org(session, org)
    code = _wallet_currency(session, organization, currency)
    wallet = session.scalar(
        select(BillingWallet).where(
            BillingWallet.organization_id == organization.id, BillingWallet.currency == code
        )
    )
    if wallet is None:
        raise NotFound(f"organisation {organization.name!r} has no {code} wallet", param="wallet")
    entries = [
        {
            "sequence": entry.sequence,
            "at": iso(entry.at),
            "kind": entry.kind.value,
            "grant_id": entry.grant_id,
            "amount": decimal_text(entry.amount.amount),
            "reference": entry.reference,
        }
        for entry in reversed(BillingRepository(session).ledger(wallet.id, limit=limit))
    ]
    repo = BillingRepository(session)
    return {
        **org_fields(organization),
        "wallet_id": wallet.id,
        "currency": wallet.currency,
        "balance": decimal_text(wallet.balance),  # the sum of the ledger
        "pending": decimal_text(repo.credit_pending(wallet.id)),  # consumed, not yet in it
        "entries": entries,
    }


# -- coupons and tax ------------------------------------------------------------------------


def create_coupon(session: Session, document: Mapping[str, Any]) -> Json:
    """Create a coupon (the format of ``serialization.coupon_from_dict``)."""
    coupon = coupon_from_dict(document)
    if len(coupon.code) > _CODE_CHARS:
        raise InvalidCoupon(f"coupon code is longer than {_CODE_CHARS} characters", param="code")
    BillingRepository(session).create_coupon(coupon)
    return coupon_to_dict(coupon)


def list_coupons(session: Session) -> list[Json]:
    """Every coupon with how many organisations redeemed it."""
    redeemed = session.execute(
        select(
            BillingCouponRedemption.coupon_code, func.count(BillingCouponRedemption.id)
        ).group_by(BillingCouponRedemption.coupon_code)
    )
    counts: dict[str, int] = {code: n for code, n in redeemed}
    rows = session.scalars(select(BillingCoupon).order_by(BillingCoupon.code))
    return [
        {
            **coupon_to_dict(coupon_from_dict(row.definition)),
            "redemptions": counts.get(row.code, 0),
            "created_at": iso(row.created_at),
        }
        for row in rows
    ]


def redeem_coupon(session: Session, org: str, code: str, period: str) -> Json:
    """Apply coupon ``code`` to the organisation from ``period`` (``"2026-11"``) on."""
    organization = accounts.get_org(session, org)
    first = Period.parse(period)
    repo = BillingRepository(session)
    coupon = repo.load_coupon(code)
    if isinstance(coupon.discount, AmountOff):
        # Caught now rather than when the period closes and the invoice cannot be drafted.
        wanted = coupon.discount.amount.currency
        for subscription in repo.timeline(organization.id).in_period(first):
            if subscription.plan.currency != wanted:
                raise CurrencyMismatch(
                    f"coupon {code!r} takes {wanted} off, but {organization.name!r} is billed "
                    f"in {subscription.plan.currency} in {_month(first)}",
                    param="coupon",
                )
    redemption = repo.redeem_coupon(organization.id, code, first)
    return {
        **org_fields(organization),
        "coupon": coupon_to_dict(redemption.coupon),
        "first_period": _month(redemption.first_period),
    }


def set_tax_rate(session: Session, org: str, name: str, percent: str) -> Json:
    """The organisation's tax rate for invoices drafted from now on."""
    organization = accounts.get_org(session, org)
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_CHARS:
        raise InvalidTaxRate(f"tax name must be 1..{_NAME_CHARS} characters", param="name")
    rate = TaxRate(decimal_string(percent, "percent", InvalidTaxRate), name.strip())
    BillingRepository(session).set_tax_rate(organization.id, rate)
    return {**org_fields(organization), "name": rate.name, "percent": decimal_text(rate.percent)}


# -- invoices -------------------------------------------------------------------------------


def _invoice_status(status: str) -> InvoiceStatus:
    try:
        return InvoiceStatus(status)
    except ValueError:
        choices = ", ".join(s.value for s in InvoiceStatus)
        raise InvalidRequest(f"status {status!r} is not one of {choices}", param="status") from None


def list_invoices(
    session: Session, org: str | None = None, period: str | None = None, status: str | None = None
) -> list[Json]:
    """Invoice headers (totals, status), oldest period first; filters are optional."""
    # Headers come from the invoice rows alone: loading every invoice's lines to list
    # them would cost a query per invoice, and ``show_invoice`` checks the lines.
    query = (
        select(BillingInvoice, Organization.name)
        .join(Organization, Organization.id == BillingInvoice.organization_id)
        .order_by(BillingInvoice.period_start, BillingInvoice.created_at, BillingInvoice.id)
    )
    if org is not None:
        query = query.where(BillingInvoice.organization_id == accounts.get_org(session, org).id)
    if period is not None:
        query = query.where(BillingInvoice.period_start == Period.parse(period).start)
    if status is not None:
        query = query.where(BillingInvoice.status == _invoice_status(status).value)
    return [
        {
            "id": row.id,
            "organization_id": row.organization_id,
            "organization": name,
            "period_start": iso(row.period_start),
            "period_end": iso(row.period_end),
            "currency": row.currency,
            "status": row.status,
            "subtotal": decimal_text(row.subtotal),
            "discount": decimal_text(row.discount),
            "tax": decimal_text(row.tax),
            "total": decimal_text(row.total),
            "created_at": iso(row.created_at),
            "finalized_at": iso(row.finalized_at),
            "paid_at": iso(row.paid_at),
            "voided_at": iso(row.voided_at),
        }
        for row, name in session.execute(query)
    ]


def show_invoice(session: Session, invoice_id: str) -> Json:
    """The invoice with its lines and totals (``Invoice.to_dict``)."""
    return BillingRepository(session).load_invoice(invoice_id).to_dict()


def invoice_csv(session: Session, invoice_id: str) -> str:
    """The invoice's lines, discount and tax included, as CSV with a header row."""
    return BillingRepository(session).load_invoice(invoice_id).lines_csv()


def invoice_pdf(session: Session, invoice_id: str) -> bytes:
    """The invoice as a PDF document, with the organisation's name in its header."""
    # Imported here: reportlab takes about 0.2 s to import, which every CLI command and
    # server start would pay for a path that only this function takes.
    from modelmint.billing.invoice_pdf import invoice_pdf as render

    invoice = BillingRepository(session).load_invoice(invoice_id)
    org = session.get(Organization, invoice.organization_id)
    return render(invoice, organization_name=None if org is None else org.name)


def pay_invoice(session: Session, invoice_id: str, at: datetime | None = None) -> Json:
    """Mark a finalized invoice paid; any other state is ``InvalidInvoiceTransition``."""
    repo = BillingRepository(session)
    invoice = repo.load_invoice(invoice_id)
    invoice.mark_paid(at or utcnow())
    repo.save_invoice(invoice)
    return invoice.to_dict()


def void_invoice(session: Session, invoice_id: str, at: datetime | None = None) -> Json:
    """Void a draft or finalized invoice; a paid one is refunded by a credit instead."""
    repo = BillingRepository(session)
    invoice = repo.load_invoice(invoice_id)
    invoice.void(at or utcnow())
    repo.save_invoice(invoice)
    return invoice.to_dict()
