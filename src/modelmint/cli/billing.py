"""`modelmint plans | subscriptions | wallets | coupons | tax | invoices`: billing by hand.

Each command is its options and one ``run_operation`` call (``cli.operation``): one
billing administration function in one transaction, the same functions the admin
API calls. Amounts are typed as text (``--amount 12.50``) and kept exact. Results
print as JSON with ``--json``, else as the sentence or table of ``cli.billing_views``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy.orm import Session

from modelmint import billing_admin
from modelmint.billing.periods import Period
from modelmint.billing_admin import ClosedInvoice, close_period
from modelmint.cli import billing_views as views
from modelmint.cli.context import console, open_database
from modelmint.cli.operation import in_transaction, run_operation, say, show_result
from modelmint.cli.values import instant
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest

__all__ = ["alerts", "budgets", "coupons", "invoices", "plans", "subscriptions", "tax", "wallets"]

plans = typer.Typer(
    help="Billing plans: publish versions, list and show them.", no_args_is_help=True
)
subscriptions = typer.Typer(help="Which plan each organisation is on.", no_args_is_help=True)
wallets = typer.Typer(
    help="Prepaid credit: grants, top-ups, balance, ledger.", no_args_is_help=True
)
coupons = typer.Typer(help="Discount coupons and their redemptions.", no_args_is_help=True)
tax = typer.Typer(help="Tax rates on invoices.", no_args_is_help=True)
invoices = typer.Typer(
    help="Invoices: close a month, list, show, export, pay, void.", no_args_is_help=True
)

budgets = typer.Typer(help="Monthly spend caps, hard or soft.", no_args_is_help=True)
alerts = typer.Typer(help="Billing alerts and where they are sent.", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Org = Annotated[str, typer.Option("--org", help="Organisation name or id.")]
OnlyOrg = Annotated[str | None, typer.Option("--org", help="Only this organisation.")]
At = Annotated[
    str | None,
    typer.Option(help="When: YYYY-MM-DD or an ISO 8601 time (UTC unless an offset is given)."),
]
PlanCode = Annotated[str, typer.Option(help="Plan code.")]
PlanVersion = Annotated[int | None, typer.Option(min=1, help="Default: the latest.")]
Currency = Annotated[str, typer.Option(help="ISO 4217 code.")]
WalletCurrency = Annotated[str | None, typer.Option(help="Default: the only wallet.")]
InvoiceId = Annotated[str, typer.Argument(help="Invoice id.")]


def _document(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path} must hold a JSON object")
    return data


def _percents(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidRequest(
            f"thresholds are whole percents like 50,80,100, not {text!r}", param="thresholds"
        ) from None


# -- plans ----------------------------------------------------------------------------------


@plans.command("publish")
def plans_publish(
    file: Annotated[Path, typer.Argument(help="Plan document (JSON), as `plans show` prints.")],
    as_json: AsJson = False,
) -> None:
    """Publish a plan: version 1 of a new code, or the next version of an existing one."""
    document = _document(file)
    run_operation(
        lambda s: billing_admin.publish_plan(s, document),
        as_json,
        lambda plan: say(f"Published plan {plan['code']}@v{plan['version']} ({plan['kind']})."),
    )


@plans.command("list")
def plans_list(as_json: AsJson = False) -> None:
    """The latest version of every plan."""
    run_operation(billing_admin.list_plans, as_json, views.PLANS)


@plans.command("show")
def plans_show(
    code: Annotated[str, typer.Argument(help="Plan code.")],
    version: PlanVersion = None,
    as_json: AsJson = False,
) -> None:
    """A plan version as a JSON document (edit it and bump `version` to publish the next)."""
    run_operation(
        lambda s: billing_admin.show_plan(s, code, version),
        as_json,
        lambda plan: console.print_json(data=plan),
    )


# -- subscriptions --------------------------------------------------------------------------


@subscriptions.command("subscribe")
def subscriptions_subscribe(
    org: Org, plan: PlanCode, version: PlanVersion = None, at: At = None, as_json: AsJson = False
) -> None:
    """Start an organisation on a plan (now, unless --at)."""
    run_operation(
        lambda s: billing_admin.subscribe(s, org, plan, version, instant(at, option="--at")),
        as_json,
        views.subscription("is on"),
    )


@subscriptions.command("change")
def subscriptions_change(
    org: Org, plan: PlanCode, version: PlanVersion = None, at: At = None, as_json: AsJson = False
) -> None:
    """Move an organisation to another plan; the fee of the old one is prorated."""
    run_operation(
        lambda s: billing_admin.change_plan(s, org, plan, version, instant(at, option="--at")),
        as_json,
        views.subscription("moved to"),
    )


@subscriptions.command("cancel")
def subscriptions_cancel(org: Org, at: At = None, as_json: AsJson = False) -> None:
    """End an organisation's current subscription (now, unless --at)."""
    run_operation(
        lambda s: billing_admin.cancel(s, org, instant(at, option="--at")),
        as_json,
        views.subscription("was on"),
    )


@subscriptions.command("list")
def subscriptions_list(org: Org, as_json: AsJson = False) -> None:
    """An organisation's subscriptions, oldest first."""
    run_operation(lambda s: billing_admin.list_subscriptions(s, org), as_json, views.SUBSCRIPTIONS)


# -- wallets --------------------------------------------------------------------------------


@wallets.command("open")
def wallets_open(org: Org, currency: Currency = "USD", as_json: AsJson = False) -> None:
    """Open an empty wallet (granting credit opens one too)."""
    run_operation(
        lambda s: billing_admin.open_wallet(s, org, currency),
        as_json,
        lambda w: say(f"Opened {w['currency']} wallet {w['wallet_id']} for {org}."),
    )


@wallets.command("grant")
def wallets_grant(
    org: Org,
    amount: Annotated[str, typer.Option(help="Decimal amount, e.g. 25.00.")],
    currency: Currency = "USD",
    paid: Annotated[
        bool,
        typer.Option(
            "--paid/--promotional", help="A paid top-up, or promotional credit (spent first)."
        ),
    ] = False,
    expires: Annotated[str | None, typer.Option(help="Expiry: YYYY-MM-DD or ISO time.")] = None,
    priority: Annotated[
        int | None, typer.Option(help="Lower is spent first (promotional 0, paid 10).")
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="Payment or campaign reference for the ledger.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Add credit to an organisation's wallet, opening the wallet if needed."""
    kind = "paid" if paid else "promotional"
    run_operation(
        lambda s: billing_admin.grant_credit(
            s,
            org,
            amount,
            currency,
            kind=kind,
            priority=priority,
            expires_at=instant(expires, option="--expires"),
            reference=reference,
        ),
        as_json,
        views.granted(org, currency),
    )


@wallets.command("balance")
def wallets_balance(org: Org, currency: WalletCurrency = None, as_json: AsJson = False) -> None:
    """Balance, reserved and available credit, and each grant's remainder."""
    run_operation(lambda s: billing_admin.wallet_balance(s, org, currency), as_json, views.wallet)


@wallets.command("ledger")
def wallets_ledger(
    org: Org,
    currency: WalletCurrency = None,
    limit: Annotated[
        int, typer.Option(min=1, max=billing_admin.MAX_LEDGER_LIMIT, help="Newest N entries.")
    ] = 100,
    as_json: AsJson = False,
) -> None:
    """The wallet's append-only ledger, newest entries last."""
    run_operation(
        lambda s: billing_admin.wallet_ledger(s, org, currency, limit), as_json, views.ledger
    )


# -- coupons and tax ------------------------------------------------------------------------


@coupons.command("create")
def coupons_create(
    file: Annotated[Path, typer.Argument(help="Coupon document (JSON).")],
    as_json: AsJson = False,
) -> None:
    """Create a coupon from a JSON document (code, discount, duration)."""
    document = _document(file)
    run_operation(
        lambda s: billing_admin.create_coupon(s, document),
        as_json,
        lambda coupon: say(f"Created coupon {coupon['code']}."),
    )


@coupons.command("redeem")
def coupons_redeem(
    code: Annotated[str, typer.Argument(help="Coupon code.")],
    org: Org,
    period: Annotated[
        str | None, typer.Option(help="First month it applies to, YYYY-MM (default: this one).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Apply a coupon to an organisation's invoices from a month on."""
    month = period or f"{datetime.now(UTC):%Y-%m}"
    run_operation(
        lambda s: billing_admin.redeem_coupon(s, org, code, month),
        as_json,
        lambda result: say(f"Coupon {code} applies to {org} from {result['first_period']}."),
    )


@coupons.command("list")
def coupons_list(as_json: AsJson = False) -> None:
    """Every coupon and how many organisations redeemed it."""
    run_operation(billing_admin.list_coupons, as_json, views.COUPONS)


@tax.command("set")
def tax_set(
    org: Org,
    percent: Annotated[str, typer.Option(help="Rate in percent, e.g. 20 or 7.25.")],
    name: Annotated[str, typer.Option(help="Shown on invoices, e.g. VAT.")] = "Tax",
    as_json: AsJson = False,
) -> None:
    """Set an organisation's tax rate for invoices drafted from now on."""
    run_operation(
        lambda s: billing_admin.set_tax_rate(s, org, name, percent),
        as_json,
        lambda rate: say(f"Tax rate of {org}: {rate['name']} {rate['percent']}%."),
    )


# -- invoices -------------------------------------------------------------------------------


class InvoiceFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    PDF = "pdf"


@invoices.command("list")
def invoices_list(
    org: OnlyOrg = None,
    period: Annotated[str | None, typer.Option(help="Only this month, YYYY-MM.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only draft, finalized, paid or void ones.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Invoices with their totals and status, oldest period first."""
    run_operation(
        lambda s: billing_admin.list_invoices(s, org, period, status), as_json, views.INVOICES
    )


def _invoice_document(session: Session, invoice_id: str, format: InvoiceFormat) -> bytes:
    if format is InvoiceFormat.PDF:
        return billing_admin.invoice_pdf(session, invoice_id)
    if format is InvoiceFormat.CSV:
        return billing_admin.invoice_csv(session, invoice_id).encode()
    return orjson.dumps(billing_admin.show_invoice(session, invoice_id), option=orjson.OPT_INDENT_2)


@invoices.command("show")
def invoices_show(
    invoice_id: InvoiceId,
    format: Annotated[
        InvoiceFormat, typer.Option(help="json, csv for the lines, or pdf (needs --output).")
    ] = InvoiceFormat.JSON,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
) -> None:
    """Print an invoice as JSON or its lines as CSV, or write it to a file (PDF too)."""
    if format is InvoiceFormat.PDF and output is None:
        # A PDF is binary: dumped on a terminal it is noise that can upset the terminal.
        raise InvalidRequest("--format pdf writes a binary file: give --output FILE")
    document = in_transaction(lambda s: _invoice_document(s, invoice_id, format))
    if output is None:
        text = document.decode()
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.write_bytes(document)
    except OSError as exc:
        raise InvalidRequest(f"cannot write {output}: {exc.strerror}") from None
    say(f"Invoice {invoice_id} written to {output} ({format.value}).")


@invoices.command("pay")
def invoices_pay(invoice_id: InvoiceId, at: At = None, as_json: AsJson = False) -> None:
    """Mark a finalized invoice paid."""
    run_operation(
        lambda s: billing_admin.pay_invoice(s, invoice_id, instant(at, option="--at")),
        as_json,
        lambda i: say(f"Invoice {invoice_id} is paid ({i['total']} {i['currency']})."),
    )


@invoices.command("void")
def invoices_void(invoice_id: InvoiceId, at: At = None, as_json: AsJson = False) -> None:
    """Void a draft or finalized invoice (a paid one is refunded by a credit instead)."""
    run_operation(
        lambda s: billing_admin.void_invoice(s, invoice_id, instant(at, option="--at")),
        as_json,
        lambda _: say(f"Invoice {invoice_id} is void."),
    )


def _close_outcome(closed: ClosedInvoice) -> str:
    if not closed.created:
        return "already closed"
    return "created" if closed.stored else "would be created"


@invoices.command("close")
def invoices_close(
    period: Annotated[str, typer.Option(help="The month to close, YYYY-MM.")],
    org: OnlyOrg = None,
    allow_open: Annotated[
        bool,
        typer.Option(
            "--allow-open",
            help="Close a month that has not ended yet: final, later usage is left off "
            "(preview it with --dry-run first).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show the invoices a close would create and store nothing "
            "(a month still running too).",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Draft and finalise the invoices of a month; running it again changes nothing.

    Closing is final: a finalised invoice is never redrafted. Preview with --dry-run."""
    # Not one transaction: the close commits each organisation's invoice on its own.
    database = open_database()
    try:
        closed = close_period(
            database, Period.parse(period), organization=org, now=utcnow(),
            allow_open=allow_open, dry_run=dry_run,
        )  # fmt: skip
    finally:
        database.dispose()
    rows = [{**c.invoice.to_dict(), "created": c.created, "stored": c.stored} for c in closed]

    def show(rows: list[dict[str, Any]]) -> None:
        if not rows:
            say(f"No organisation had a subscription in {period}; no invoice to close.")
            return
        outcomes = (_close_outcome(c) for c in closed)
        views.CLOSED_INVOICES({**row, "outcome": o} for row, o in zip(rows, outcomes, strict=True))
        if dry_run:
            say("Dry run: nothing was stored. Run again without --dry-run to close the month.")

    show_result(rows, as_json, show)


# -- budgets and alerts -------------------------------------------------------------------


@budgets.command("set")
def budgets_set(
    org: Org,
    amount: Annotated[str, typer.Option(help="Monthly limit, e.g. 100.00.")],
    currency: Annotated[str, typer.Option(help="Currency code.")] = "USD",
    hard: Annotated[
        bool | None,
        typer.Option(
            "--hard/--soft",
            help="Hard: refuse requests (402) past the limit; soft: alert only. "
            "Default: the budget's current kind (hard for a new budget).",
        ),
    ] = None,
    thresholds: Annotated[
        str | None,
        typer.Option(
            help="Alert at these percents of the limit (1-100), e.g. 50,80,100. "
            "Default: the budget's current ones (50,80,100 for a new budget)."
        ),
    ] = None,
    key: Annotated[str | None, typer.Option(help="A key id: that key's own budget.")] = None,
    as_json: AsJson = False,
) -> None:
    """Set the monthly budget of an organisation (or of one of its keys).

    Thresholds this month's spend has already reached alert at once."""
    percents = _percents(thresholds)
    run_operation(
        lambda s: billing_admin.set_budget(
            s, org, amount, currency, hard=hard, thresholds=percents, key=key
        ),
        as_json,
        views.budget(key),
    )


@budgets.command("list")
def budgets_list(org: Org, as_json: AsJson = False) -> None:
    """An organisation's budgets, with this month's spend."""
    run_operation(lambda s: billing_admin.list_budgets(s, org), as_json, views.BUDGETS)


@budgets.command("remove")
def budgets_remove(
    org: Org,
    key: Annotated[str | None, typer.Option(help="A key id: remove that key's budget.")] = None,
) -> None:
    """Remove a budget."""
    in_transaction(lambda s: billing_admin.remove_budget(s, org, key))
    say("Budget removed.")


@alerts.command("webhook")
def alerts_webhook(
    org: Org,
    url: Annotated[str | None, typer.Option(help="http(s) URL; omit to stop sending.")] = None,
    as_json: AsJson = False,
) -> None:
    """Set (or clear) where an organisation's billing alerts are POSTed."""
    run_operation(
        lambda s: billing_admin.set_alert_webhook(s, org, url),
        as_json,
        lambda r: say(
            f"Alerts of {r['organization']} go to {url}." if url else "Alerts are recorded only."
        ),
    )


@alerts.command("list")
def alerts_list(
    org: OnlyOrg = None,
    status: Annotated[
        str | None, typer.Option(help="pending, delivered, failed or unrouted.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: AsJson = False,
) -> None:
    """Billing alerts, newest first."""
    run_operation(lambda s: billing_admin.list_alerts(s, org, status, limit), as_json, views.ALERTS)
