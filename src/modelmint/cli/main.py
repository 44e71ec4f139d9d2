"""`modelmint`: the command line of the platform.

Errors a user can act on print one line and exit with the error's code; no traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.table import Table

from modelmint import accounts
from modelmint.cli import billing, keys, models
from modelmint.cli.context import console, err_console, open_database, session_scope
from modelmint.cli.demo import demo
from modelmint.cli.feedback import compare_command, datasets, samples
from modelmint.cli.payments import payments
from modelmint.cli.portal import portal
from modelmint.cli.reports import report
from modelmint.cli.simulate import simulate_command
from modelmint.cli.train import train_command
from modelmint.cli.up import up
from modelmint.erasure import delete_organization
from modelmint.errors import ModelMintError

app = typer.Typer(
    help="ModelMint: train, serve, meter and bill AI models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("up")(up)
app.command("deploy")(models.deploy_command)
app.command("train")(train_command)
app.add_typer(keys.app, name="keys")
app.add_typer(models.app, name="models")
app.add_typer(billing.plans, name="plans")
app.add_typer(billing.subscriptions, name="subscriptions")
app.add_typer(billing.wallets, name="wallets")
app.add_typer(billing.coupons, name="coupons")
app.add_typer(billing.tax, name="tax")
app.add_typer(billing.invoices, name="invoices")
app.add_typer(billing.budgets, name="budgets")
app.add_typer(billing.alerts, name="alerts")
app.add_typer(payments, name="payments")
app.add_typer(portal, name="portal")
app.add_typer(report, name="report")
app.command("simulate")(simulate_command)
app.add_typer(demo, name="demo")
app.add_typer(datasets, name="datasets")
app.add_typer(samples, name="samples")
app.command("compare")(compare_command)

orgs = typer.Typer(help="Organisations (customers).", no_args_is_help=True)
app.add_typer(orgs, name="orgs")


@orgs.command("create")
def orgs_create(name: Annotated[str, typer.Argument(help="Organisation name.")]) -> None:
    """Create an organisation."""
    with session_scope() as session:
        org = accounts.create_org(session, name)
        org_id = org.id
    console.print(f"Created organisation {name} ({org_id}).")


@orgs.command("list")
def orgs_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List organisations."""
    with session_scope() as session:
        rows = [
            {
                "id": o.id,
                "name": o.name,
                "created_at": o.created_at.isoformat(),
                "deleted_at": o.deleted_at.isoformat() if o.deleted_at else None,
            }
            for o in accounts.list_orgs(session)
        ]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table("id", "name", "created", "deleted")
    for r in rows:
        table.add_row(r["id"], r["name"], r["created_at"], r["deleted_at"] or "")
    console.print(table)


@orgs.command("delete")
def orgs_delete(
    name: Annotated[str, typer.Argument(help="Organisation name or id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Delete an organisation: revoke its keys, erase its samples and feedback, end its plan.

    Usage, charges and invoices are kept: they are the books (see docs/architecture.md).
    """
    if not yes and not typer.confirm(
        f"Delete {name}? Its keys stop working and its samples and feedback are erased."
    ):
        raise typer.Exit(1)
    with session_scope() as session:
        erasure = delete_organization(session, name)
    if as_json:
        typer.echo(orjson.dumps(erasure.to_json()).decode())
        return
    if erasure.already_deleted:
        console.print(f"{erasure.name} was already deleted on {erasure.deleted_at:%Y-%m-%d}.")
        return
    console.print(
        f"Deleted {erasure.name}: {len(erasure.revoked_key_ids)} keys revoked, "
        f"{erasure.samples_deleted} samples and {erasure.feedback_deleted} feedback rows erased"
        + (", subscription ended" if erasure.subscription_ended else "")
        + "."
    )
    if erasure.datasets_with_its_requests:
        console.print(
            "Datasets built earlier hold some of its requests (not rewritten): "
            + ", ".join(erasure.datasets_with_its_requests)
        )


@orgs.command("limits")
def orgs_limits(
    name: Annotated[str, typer.Argument(help="Organisation name or id.")],
    rpm: Annotated[int | None, typer.Option(help="Requests per minute, all keys together.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute, all keys together.")] = None,
    concurrent: Annotated[
        int | None, typer.Option(help="Requests in progress at once, all keys together.")
    ] = None,
) -> None:
    """Set the limits an organisation's keys share; an option left out removes that limit."""
    with session_scope() as session:
        org = accounts.get_org(session, name)
        accounts.set_org_limits(
            session, org, rpm_limit=rpm, tpm_limit=tpm, max_concurrent=concurrent
        )
    console.print(
        f"Limits of {name}: rpm={rpm or '-'} tpm={tpm or '-'} concurrent={concurrent or '-'}"
    )


@app.command("migrate")
def migrate_command() -> None:
    """Bring the database schema to the newest version."""
    open_database().dispose()
    console.print("Database is up to date.")


def main() -> None:
    try:
        app()
    except ModelMintError as exc:
        # soft_wrap: one line, however narrow the terminal (or 80 columns off one).
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
