"""`modelmint plans | subscriptions | wallets | coupons | tax | invoices`: billing by hand.

Each command is one call to ``charging.operations`` in one transaction; the admin
API calls the same functions. Amounts are typed as text (``--amount 12.50``) and
kept exact. Listings print a table, or JSON with ``--json``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from modelmint.billing.periods import Period
from modelmint.charging import budget_operations, operations
from modelmint.charging.closing import ClosedInvoice, close_period
from modelmint.cli.context import console, open_database, session_scope
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
At = Annotated[
    str | None,
    typer.Option(help="When: YYYY-MM-DD or an ISO 8601 time (UTC unless an offset is given)."),
]


def _emit(data: Any) -> None:
    typer.echo(orjson.dumps(data).decode())


def _say(text: str) -> None:
    # Codes and ids are the user's text: never read them as Rich markup.
    console.print(text, markup=False, highlight=False)


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


def _instant(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{value!r} is not a date (YYYY-MM-DD) or ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _add_row(table: Table, *cells: object) -> None:
    # Plain Text cells: a reference or code such as "pay[/]1" is data, not Rich markup.
    table.add_row(*(Text("-" if cell is None else str(cell)) for cell in cells))


# -- plans ----------------------------------------------------------------------------------


@plans.command("publish")
def plans_publish(
    file: Annotated[Path, typer.Argument(help="Plan document (JSON), as `plans show` prints.")],
    as_json: AsJson = False,
) -> None:
    """Publish a plan: version 1 of a new code, or the next version of an existing one."""
    document = _document(file)
    with session_scope() as session:
        plan = operations.publish_plan(session, document)
    if as_json:
        _emit(plan)
        return
    _say(f"Published plan {plan['code']}@v{plan['version']} ({plan['kind']}).")


@plans.command("list")
def plans_list(as_json: AsJson = False) -> None:
    """The latest version of every plan."""
    with session_scope() as session:
        rows = operations.list_plans(session)
    if as_json:
        _emit(rows)
        return
    table = Table("code", "kind", "version", "versions", "currency", "fixed fee")
    for r in rows:
        _add_row(
            table,
            r["code"],
            r["kind"],
            r["version"],
            r["versions"],
            r["currency"],
            r["fixed_fee"],
        )
    console.print(table)


@plans.command("show")
def plans_show(
    code: Annotated[str, typer.Argument(help="Plan code.")],
    version: Annotated[int | None, typer.Option(min=1, help="Default: the latest.")] = None,
    as_json: AsJson = False,
) -> None:
    """A plan version as a JSON document (edit it and bump `version` to publish the next)."""
    with session_scope() as session:
        plan = operations.show_plan(session, code, version)
    if as_json:
        _emit(plan)
        return
    console.print_json(data=plan)


# -- subscriptions --------------------------------------------------------------------------


def _print_subscription(verb: str, s: dict[str, Any]) -> None:
    ends = f" until {s['ends_at']}" if s["ends_at"] else ""
    _say(f"{s['organization']} {verb} {s['plan']} from {s['starts_at']}{ends}.")


@subscriptions.command("subscribe")
def subscriptions_subscribe(
    org: Org,
    plan: Annotated[str, typer.Option(help="Plan code.")],
    version: Annotated[int | None, typer.Option(min=1, help="Default: the latest.")] = None,
    at: At = None,
    as_json: AsJson = False,
) -> None:
    """Start an organisation on a plan (now, unless --at)."""
    with session_scope() as session:
        result = operations.subscribe(session, org, plan, version, _instant(at))
    if as_json:
        _emit(result)
        return
    _print_subscription("is on", result)


@subscriptions.command("change")
def subscriptions_change(
    org: Org,
    plan: Annotated[str, typer.Option(help="Plan code.")],
    version: Annotated[int | None, typer.Option(min=1, help="Default: the latest.")] = None,
    at: At = None,
    as_json: AsJson = False,
) -> None:
    """Move an organisation to another plan; the fee of the old one is prorated."""
    with session_scope() as session:
        result = operations.change_plan(session, org, plan, version, _instant(at))
    if as_json:
        _emit(result)
        return
    _print_subscription("moved to", result)


@subscriptions.command("cancel")
def subscriptions_cancel(org: Org, at: At = None, as_json: AsJson = False) -> None:
    """End an organisation's current subscription (now, unless --at)."""
    with session_scope() as session:
        result = operations.cancel(session, org, _instant(at))
    if as_json:
        _emit(result)
        return
    _print_subscription("was on", result)


@subscriptions.command("list")
def subscriptions_list(org: Org, as_json: AsJson = False) -> None:
    """An organisation's subscriptions, oldest first."""
    with session_scope() as session:
        rows = operations.list_subscriptions(session, org)
    if as_json:
        _emit(rows)
        return
    table = Table("plan", "kind", "currency", "starts", "ends", "status")
    for r in rows:
        _add_row(
            table, r["plan"], r["kind"], r["currency"], r["starts_at"], r["ends_at"], r["status"]
        )
    console.print(table)


# -- wallets --------------------------------------------------------------------------------


def _print_wallet(w: dict[str, Any]) -> None:
    cur = w["currency"]
    _say(
        f"{w['organization']}: {w['available']} {cur} available "
        f"(balance {w['balance']}, reserved {w['reserved']})."
    )
    if not w["grants"]:
        return
    table = Table("grant", "kind", "amount", "remaining", "priority", "granted", "expires")
    for g in w["grants"]:
        _add_row(
            table,
            g["id"],
            g["kind"],
            g["amount"],
            g["remaining"],
            g["priority"],
            g["granted_at"],
            g["expires_at"],
        )
    console.print(table)


@wallets.command("open")
def wallets_open(
    org: Org,
    currency: Annotated[str, typer.Option(help="ISO 4217 code.")] = "USD",
    as_json: AsJson = False,
) -> None:
    """Open an empty wallet (granting credit opens one too)."""
    with session_scope() as session:
        wallet = operations.open_wallet(session, org, currency)
    if as_json:
        _emit(wallet)
        return
    _say(f"Opened {wallet['currency']} wallet {wallet['wallet_id']} for {org}.")


@wallets.command("grant")
def wallets_grant(
    org: Org,
    amount: Annotated[str, typer.Option(help="Decimal amount, e.g. 25.00.")],
    currency: Annotated[str, typer.Option(help="ISO 4217 code.")] = "USD",
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
    with session_scope() as session:
        result = operations.grant_credit(
            session,
            org,
            amount,
            currency,
            kind="paid" if paid else "promotional",
            priority=priority,
            expires_at=_instant(expires),
            reference=reference,
        )
    if as_json:
        _emit(result)
        return
    grant = result["grant"]
    _say(f"Granted {grant['amount']} {currency.upper()} ({grant['kind']}) to {org}.")
    _print_wallet(result["wallet"])


@wallets.command("balance")
def wallets_balance(
    org: Org,
    currency: Annotated[str | None, typer.Option(help="Default: the only wallet.")] = None,
    as_json: AsJson = False,
) -> None:
    """Balance, reserved and available credit, and each grant's remainder."""
    with session_scope() as session:
        wallet = operations.wallet_balance(session, org, currency)
    if as_json:
        _emit(wallet)
        return
    _print_wallet(wallet)


@wallets.command("ledger")
def wallets_ledger(
    org: Org,
    currency: Annotated[str | None, typer.Option(help="Default: the only wallet.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=operations.MAX_LEDGER_LIMIT, help="Newest N entries.")
    ] = 100,
    as_json: AsJson = False,
) -> None:
    """The wallet's append-only ledger, newest entries last."""
    with session_scope() as session:
        ledger = operations.wallet_ledger(session, org, currency, limit)
    if as_json:
        _emit(ledger)
        return
    table = Table("#", "at", "kind", "grant", "amount", "reference")
    for e in ledger["entries"]:
        _add_row(
            table,
            e["sequence"],
            e["at"],
            e["kind"],
            e["grant_id"],
            e["amount"],
            e["reference"],
        )
    console.print(table)
    pending = ledger["pending"]
    note = f", less {pending} consumed and not yet posted" if Decimal(pending) else ""
    _say(f"Balance: {ledger['balance']} {ledger['currency']}{note}")


# -- coupons and tax ------------------------------------------------------------------------


@coupons.command("create")
def coupons_create(
    file: Annotated[Path, typer.Argument(help="Coupon document (JSON).")],
    as_json: AsJson = False,
) -> None:
    """Create a coupon from a JSON document (code, discount, duration)."""
    document = _document(file)
    with session_scope() as session:
        coupon = operations.create_coupon(session, document)
    if as_json:
        _emit(coupon)
        return
    _say(f"Created coupon {coupon['code']}.")


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
    with session_scope() as session:
        result = operations.redeem_coupon(session, org, code, month)
    if as_json:
        _emit(result)
        return
    _say(f"Coupon {code} applies to {org} from {result['first_period']}.")


def _discount(coupon: dict[str, Any]) -> str:
    discount = coupon["discount"]
    if discount["type"] == "percent_off":
        return f"{discount['percent']}% off"
    return f"{discount['amount']['amount']} {discount['amount']['currency']} off"


@coupons.command("list")
def coupons_list(as_json: AsJson = False) -> None:
    """Every coupon and how many organisations redeemed it."""
    with session_scope() as session:
        rows = operations.list_coupons(session)
    if as_json:
        _emit(rows)
        return
    table = Table("code", "discount", "duration", "redemptions")
    for r in rows:
        duration = r["duration"]["kind"]
        if r["duration"]["periods"] is not None:
            duration += f" ({r['duration']['periods']} months)"
        _add_row(table, r["code"], _discount(r), duration, r["redemptions"])
    console.print(table)


@tax.command("set")
def tax_set(
    org: Org,
    percent: Annotated[str, typer.Option(help="Rate in percent, e.g. 20 or 7.25.")],
    name: Annotated[str, typer.Option(help="Shown on invoices, e.g. VAT.")] = "Tax",
    as_json: AsJson = False,
) -> None:
    """Set an organisation's tax rate for invoices drafted from now on."""
    with session_scope() as session:
        result = operations.set_tax_rate(session, org, name, percent)
    if as_json:
        _emit(result)
        return
    _say(f"Tax rate of {org}: {result['name']} {result['percent']}%.")


# -- invoices -------------------------------------------------------------------------------


class InvoiceFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    PDF = "pdf"


@invoices.command("list")
def invoices_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation.")] = None,
    period: Annotated[str | None, typer.Option(help="Only this month, YYYY-MM.")] = None,
    status: Annotated[
        str | None, typer.Option(help="Only draft, finalized, paid or void ones.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Invoices with their totals and status, oldest period first."""
    with session_scope() as session:
        rows = operations.list_invoices(session, org, period, status)
    if as_json:
        _emit(rows)
        return
    table = Table("id", "organisation", "period", "status", "subtotal", "discount", "tax", "total")
    for r in rows:
        _add_row(
            table,
            r["id"],
            r["organization"],
            r["period_start"][:7],
            r["status"],
            r["subtotal"],
            r["discount"],
            r["tax"],
            f"{r['total']} {r['currency']}",
        )
    console.print(table)


@invoices.command("show")
def invoices_show(
    invoice_id: Annotated[str, typer.Argument(help="Invoice id.")],
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
    with session_scope() as session:
        if format is InvoiceFormat.PDF:
            document: bytes = operations.invoice_pdf(session, invoice_id)
        elif format is InvoiceFormat.CSV:
            document = operations.invoice_csv(session, invoice_id).encode()
        else:
            document = orjson.dumps(
                operations.show_invoice(session, invoice_id), option=orjson.OPT_INDENT_2
            )
    if output is None:
        text = document.decode()
        typer.echo(text, nl=not text.endswith("\n"))
        return
    try:
        output.write_bytes(document)
    except OSError as exc:
        raise InvalidRequest(f"cannot write {output}: {exc.strerror}") from None
    _say(f"Invoice {invoice_id} written to {output} ({format.value}).")


@invoices.command("pay")
def invoices_pay(
    invoice_id: Annotated[str, typer.Argument(help="Invoice id.")],
    at: At = None,
    as_json: AsJson = False,
) -> None:
    """Mark a finalized invoice paid."""
    with session_scope() as session:
        invoice = operations.pay_invoice(session, invoice_id, _instant(at))
    if as_json:
        _emit(invoice)
        return
    _say(f"Invoice {invoice_id} is paid ({invoice['total']} {invoice['currency']}).")


@invoices.command("void")
def invoices_void(
    invoice_id: Annotated[str, typer.Argument(help="Invoice id.")],
    at: At = None,
    as_json: AsJson = False,
) -> None:
    """Void a draft or finalized invoice (a paid one is refunded by a credit instead)."""
    with session_scope() as session:
        invoice = operations.void_invoice(session, invoice_id, _instant(at))
    if as_json:
        _emit(invoice)
        return
    _say(f"Invoice {invoice_id} is void.")


@invoices.command("close")
def invoices_close(
    period: Annotated[str, typer.Option(help="The month to close, YYYY-MM.")],
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation.")] = None,
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
    database = open_database()
    try:
        closed = close_period(
            database, Period.parse(period), organization=org, now=utcnow(),
            allow_open=allow_open, dry_run=dry_run,
        )  # fmt: skip
    finally:
        database.dispose()
    rows = [{**c.invoice.to_dict(), "created": c.created, "stored": c.stored} for c in closed]
    if as_json:
        _emit(rows)
        return
    if not rows:
        _say(f"No organisation had a subscription in {period}; no invoice to close.")
        return
    table = Table("id", "organisation", "status", "total", "")
    for c, row in zip(closed, rows, strict=True):
        _add_row(
            table,
            row["id"],
            row["organization_id"],
            row["status"],
            f"{row['total']} {row['currency']}",
            _close_outcome(c),
        )
    console.print(table)
    if dry_run:
        _say("Dry run: nothing was stored. Run again without --dry-run to close the month.")


def _close_outcome(closed: ClosedInvoice) -> str:
    if not closed.created:
        return "already closed"
    return "created" if closed.stored else "would be created"


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
    with session_scope() as session:
        budget = budget_operations.set_budget(
            session, org, amount, currency, hard=hard, thresholds=percents, key=key
        )
    if as_json:
        _emit(budget)
        return
    kind = "hard" if budget["hard"] else "soft"
    raised = budget["alerts_raised"]
    _say(
        f"{kind.capitalize()} budget of {budget['limit']} {budget['currency']} a month for "
        f"{key or budget['organization']}; {budget['spent']} spent this month."
        + (f" Alerts raised at {', '.join(f'{p}%' for p in raised)}." if raised else "")
    )


def _percents(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidRequest(
            f"thresholds are whole percents like 50,80,100, not {text!r}", param="thresholds"
        ) from None


@budgets.command("list")
def budgets_list(org: Org, as_json: AsJson = False) -> None:
    """An organisation's budgets, with this month's spend."""
    with session_scope() as session:
        rows = budget_operations.list_budgets(session, org)
    if as_json:
        _emit(rows)
        return
    table = Table("scope", "limit", "kind", "spent", "held", "thresholds")
    for r in rows:
        _add_row(
            table,
            r["api_key_id"] or r["organization"],
            f"{r['limit']} {r['currency']}",
            "hard" if r["hard"] else "soft",
            r["spent"],
            r["held"],
            ",".join(str(t) for t in r["thresholds"]),
        )
    console.print(table)


@budgets.command("remove")
def budgets_remove(
    org: Org,
    key: Annotated[str | None, typer.Option(help="A key id: remove that key's budget.")] = None,
) -> None:
    """Remove a budget."""
    with session_scope() as session:
        budget_operations.remove_budget(session, org, key)
    _say("Budget removed.")


@alerts.command("webhook")
def alerts_webhook(
    org: Org,
    url: Annotated[str | None, typer.Option(help="http(s) URL; omit to stop sending.")] = None,
    as_json: AsJson = False,
) -> None:
    """Set (or clear) where an organisation's billing alerts are POSTed."""
    with session_scope() as session:
        result = budget_operations.set_alert_webhook(session, org, url)
    if as_json:
        _emit(result)
        return
    _say(f"Alerts of {result['organization']} go to {url}." if url else "Alerts are recorded only.")


@alerts.command("list")
def alerts_list(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation.")] = None,
    status: Annotated[
        str | None, typer.Option(help="pending, delivered, failed or unrouted.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    as_json: AsJson = False,
) -> None:
    """Billing alerts, newest first."""
    with session_scope() as session:
        rows = budget_operations.list_alerts(session, org, status, limit)
    if as_json:
        _emit(rows)
        return
    table = Table("created", "organisation", "kind", "metric", "threshold", "status", "attempts")
    for r in rows:
        _add_row(
            table,
            r["created_at"],
            r["api_key_id"] or r["organization"],
            r["kind"],
            r["metric"],
            f"{r['threshold']}%",
            r["status"],
            r["attempts"],
        )
    console.print(table)
