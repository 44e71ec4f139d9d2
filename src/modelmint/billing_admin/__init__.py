"""Billing administration: the services the admin API, the CLI and the dashboard call.

Each function is one unit of work on the caller's ``Session``: it validates its
input, loads what it needs through the billing store (``billing.store``), applies
the domain rule and flushes; the caller commits (or rolls back on any error, so a
failed operation leaves nothing half-written). Results are JSON-ready dicts:
amounts as plain-notation decimal strings, instants as ISO 8601. Organisations are
named by name or id; money is taken as strings only (``fields``).

    with database.session() as session:
        billing_admin.publish_plan(session, json.loads(Path("starter.json").read_text()))
        billing_admin.subscribe(session, "acme", "starter")
        billing_admin.grant_credit(session, "acme", "25.00", "USD", kind="paid")

Modules, one noun each:

    fields         exact decimals from strings, currency codes, ISO instants
    plans          publishing, listing and showing plan versions
    subscriptions  subscribing, changing plan, cancelling, the timeline
    wallets        opening wallets, granting credit, balances and ledgers
    coupons        creating, listing and redeeming coupons
    tax            an organisation's tax rate
    invoices       listing, showing, paying and voiding invoices; closing a period
    budgets        monthly budgets of organisations and keys
    alerts         listing billing alerts
    webhooks       where alerts go, and their delivery (``AlertDispatcher``)

The request path (admission, leases, settlement) is ``charging``; nothing here
runs on it.
"""

from modelmint.billing_admin.alerts import ALERT_STATUSES, list_alerts
from modelmint.billing_admin.budgets import list_budgets, remove_budget, set_budget
from modelmint.billing_admin.coupons import create_coupon, list_coupons, redeem_coupon
from modelmint.billing_admin.fields import currency_code, decimal_string, iso, org_fields
from modelmint.billing_admin.invoices import (
    ClosedInvoice,
    close_period,
    invoice_csv,
    invoice_id,
    invoice_pdf,
    list_invoices,
    pay_invoice,
    show_invoice,
    void_invoice,
)
from modelmint.billing_admin.plans import list_plans, publish_plan, show_plan
from modelmint.billing_admin.subscriptions import (
    cancel,
    change_plan,
    list_subscriptions,
    subscribe,
)
from modelmint.billing_admin.tax import set_tax_rate
from modelmint.billing_admin.wallets import (
    MAX_LEDGER_LIMIT,
    grant_credit,
    open_wallet,
    wallet_balance,
    wallet_currencies,
    wallet_ledger,
)
from modelmint.billing_admin.webhooks import AlertDispatcher, set_alert_webhook

__all__ = [
    "ALERT_STATUSES",
    "MAX_LEDGER_LIMIT",
    "AlertDispatcher",
    "ClosedInvoice",
    "cancel",
    "change_plan",
    "close_period",
    "create_coupon",
    "currency_code",
    "decimal_string",
    "grant_credit",
    "invoice_csv",
    "invoice_id",
    "invoice_pdf",
    "iso",
    "list_alerts",
    "list_budgets",
    "list_coupons",
    "list_invoices",
    "list_plans",
    "list_subscriptions",
    "open_wallet",
    "org_fields",
    "pay_invoice",
    "publish_plan",
    "redeem_coupon",
    "remove_budget",
    "set_alert_webhook",
    "set_budget",
    "set_tax_rate",
    "show_invoice",
    "show_plan",
    "subscribe",
    "void_invoice",
    "wallet_balance",
    "wallet_currencies",
    "wallet_ledger",
]
