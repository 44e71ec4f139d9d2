"""`modelmint payments`: customers, saved cards, collecting invoices, top-ups, dunning.

Each command is one call to ``payments.collection.Payments``, as the admin API
makes. Payments are on when the provider's secret key is in the environment
(``STRIPE_SECRET_KEY``; ``MODELMINT_STRIPE_API_BASE`` points at localstripe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table
from rich.text import Text

from modelmint.cli.context import console, open_database, settings
from modelmint.errors import InvalidRequest
from modelmint.payments.collection import Payments
from modelmint.payments.configured import configured_payments

__all__ = ["payments"]

payments = typer.Typer(
    help="Collect money through Stripe: cards, invoices, top-ups, dunning.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Org = Annotated[str, typer.Option("--org", help="Organisation name or id.")]


@contextmanager
def _desk() -> Iterator[Payments]:
    config = settings()
    database = open_database(config)
    try:
        configured = configured_payments(config, database)
        if configured is None:
            raise InvalidRequest(
                f"payments are off: set {config.stripe_secret_key_env} to a Stripe secret key "
                "(and MODELMINT_STRIPE_API_BASE to use localstripe)"
            )
        yield configured
    finally:
        database.dispose()


def _show(result: Any, as_json: bool, say: Callable[[Any], str]) -> None:
    if as_json:
        typer.echo(orjson.dumps(result).decode())
    else:
        console.print(say(result), markup=False, highlight=False)


def _show_payment(payment: dict[str, Any], as_json: bool) -> None:
    """Print a payment; exit 4 when it failed or waits for the customer."""
    _show(payment, as_json, _payment_line)
    if payment["status"] not in ("succeeded", "processing"):
        raise typer.Exit(4)


def _payment_line(payment: dict[str, Any]) -> str:
    line = (
        f"{payment['id']}: {payment['kind']} {payment['amount']} {payment['currency']} "
        f"{payment['status']} (attempt {payment['attempts']})"
    )
    if payment["failure"]:
        line += f": {payment['failure']}"
    if payment["next_attempt_at"]:
        line += f"; next attempt {payment['next_attempt_at']}"
    return line


@payments.command("status")
def status(org: Org, as_json: AsJson = False) -> None:
    """The organisation's customer, saved method, block and payments."""
    with _desk() as desk:
        result = desk.account(org)

    def say(account: dict[str, Any]) -> str:
        lines = [
            f"{account['organization']}: customer {account['customer_id'] or '-'}, "
            f"method {account['payment_method_label'] or 'none saved'}"
            + (f", BLOCKED since {account['blocked_at']}" if account["blocked_at"] else "")
        ]
        lines += [_payment_line(p) for p in account["payments"]]
        return "\n".join(lines)

    _show(result, as_json, say)


@payments.command("list")
def list_payments(
    org: Annotated[str | None, typer.Option("--org", help="Only this organisation.")] = None,
    state: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    as_json: AsJson = False,
) -> None:
    """Payments, oldest first."""
    with _desk() as desk:
        rows = desk.payments(org=org, state=state)
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table("id", "organisation", "kind", "amount", "status", "attempts", "next attempt")
    for row in rows:
        cells = (
            row["id"],
            row["organization"],
            row["invoice_id"] or row["kind"],
            f"{row['amount']} {row['currency']}",
            row["status"],
            row["attempts"],
            row["next_attempt_at"] or "-",
        )
        table.add_row(*(Text(str(cell)) for cell in cells))
    console.print(table)


@payments.command("customer")
def customer(org: Org) -> None:
    """Create the organisation's customer at the provider (done on demand anyway)."""
    with _desk() as desk:
        customer_id = desk.ensure_customer(org)
    console.print(f"{org} is customer {customer_id}", markup=False, highlight=False)


@payments.command("setup")
def setup(org: Org, as_json: AsJson = False) -> None:
    """Start saving a card: prints the SetupIntent's client secret for Stripe.js."""
    with _desk() as desk:
        result = desk.start_setup(org)
    _show(result, as_json, lambda r: f"{r['setup_intent']} client secret {r['client_secret']}")


@payments.command("save-method")
def save_method(
    org: Org,
    setup_intent: Annotated[
        str | None, typer.Option(help="A SetupIntent the customer confirmed.")
    ] = None,
    payment_method: Annotated[
        str | None, typer.Option(help="A payment method id (pm_...) to attach.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Make a card the one the organisation's invoices and top-ups are charged to."""
    with _desk() as desk:
        result = desk.save_method(org, setup_intent=setup_intent, payment_method=payment_method)
    _show(result, as_json, lambda r: f"{r['organization']} pays with {r['payment_method_label']}")


@payments.command("collect")
def collect(
    invoice_id: Annotated[str, typer.Argument(help="A finalized invoice.")],
    as_json: AsJson = False,
) -> None:
    """Charge a finalized invoice's total to the saved card."""
    with _desk() as desk:
        result = desk.collect_invoice(invoice_id)
    _show_payment(result, as_json)


@payments.command("refund")
def refund(
    invoice_id: Annotated[str, typer.Argument(help="A paid invoice.")],
    as_json: AsJson = False,
) -> None:
    """Refund a paid invoice's payment in full and void the invoice."""
    with _desk() as desk:
        result = desk.refund_invoice(invoice_id)
    _show(result, as_json, lambda r: f"{invoice_id} refunded ({r['refund_id']}) and void")


@payments.command("top-up")
def top_up(
    org: Org,
    amount: Annotated[str, typer.Option(help="Credit to buy, e.g. 25.00.")],
    currency: Annotated[str, typer.Option(help="Currency code.")] = "USD",
    as_json: AsJson = False,
) -> None:
    """Buy prepaid credit with the saved card; credited once the payment succeeds."""
    with _desk() as desk:
        result = desk.top_up(org, amount, currency)
    _show_payment(result, as_json)


@payments.command("auto-top-up")
def auto_top_up(
    org: Org,
    below: Annotated[
        str | None, typer.Option(help="Top up when credit falls below this, e.g. 5.00.")
    ] = None,
    amount: Annotated[str | None, typer.Option(help="Credit to buy each time.")] = None,
    currency: Annotated[str, typer.Option(help="Currency code.")] = "USD",
    off: Annotated[bool, typer.Option("--off", help="Turn auto top-up off.")] = False,
    as_json: AsJson = False,
) -> None:
    """Charge the saved card automatically when prepaid credit runs low."""
    if off != (below is None and amount is None) or (not off and None in (below, amount)):
        raise InvalidRequest("give --below and --amount, or --off")
    with _desk() as desk:
        result = desk.set_auto_top_up(org, below=below, amount=amount, currency=currency)

    def say(account: dict[str, Any]) -> str:
        rule = account["auto_top_up"]
        if rule is None:
            return f"{account['organization']}: auto top-up is off"
        return (
            f"{account['organization']}: buy {rule['amount']} {rule['currency']} whenever "
            f"credit falls below {rule['below']}"
        )

    _show(result, as_json, say)


@payments.command("retry")
def retry(
    payment_id: Annotated[str, typer.Argument(help="A failed payment (pay_...).")],
    as_json: AsJson = False,
) -> None:
    """Attempt a failed payment again now."""
    with _desk() as desk:
        result = desk.retry(payment_id)
    _show_payment(result, as_json)


@payments.command("dunning")
def dunning(as_json: AsJson = False) -> None:
    """Retry what is due and block what is overdue now (the gateway does it every minute)."""
    with _desk() as desk:
        result = desk.run_dunning()
    _show(
        result,
        as_json,
        lambda r: f"retried {len(r['retried'])}, blocked {len(r['blocked'])} organisation(s)",
    )


@payments.command("unblock")
def unblock(org: Org) -> None:
    """Let a blocked organisation's keys work again before its invoice is paid."""
    with _desk() as desk:
        desk.unblock(org)
    console.print(f"{org} is no longer blocked", markup=False, highlight=False)
