"""`modelmint keys`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.cli.context import console, session_scope
from modelmint.cli.values import instant
from modelmint.errors import NotFound
from modelmint.storage.tables import Organization

app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


def _existing_org(session: Session, org: str) -> Organization:
    try:
        return accounts.get_org(session, org)
    except NotFound as exc:
        raise NotFound(
            f"{exc.message}; create it first (modelmint orgs create) or pass --create-org",
            param=exc.param,
        ) from None


@app.command("create")
def create(
    org: Annotated[str, typer.Option(help="Organisation name or id; it must exist.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated model names the key may call (default: all)."),
    ] = None,
    expires: Annotated[str | None, typer.Option(help="Expiry date, YYYY-MM-DD (UTC).")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
    concurrent: Annotated[int | None, typer.Option(help="Requests in progress at once.")] = None,
    create_org: Annotated[
        bool, typer.Option("--create-org", help="Create the organisation if it does not exist.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API key. The secret is printed once and cannot be shown again."""
    expires_at = instant(expires, option="--expires")
    model_list = models.split(",") if models is not None else None
    with session_scope() as session:
        organization = (
            accounts.ensure_org(session, org) if create_org else _existing_org(session, org)
        )
        row, secret = accounts.create_key(
            session,
            organization,
            name=name,
            models=model_list,
            expires_at=expires_at,
            rpm_limit=rpm,
            tpm_limit=tpm,
            max_concurrent=concurrent,
        )
        info = {
            "id": row.id,
            "key": secret,
            "prefix": row.prefix,
            "organization": organization.name,
            "organization_id": organization.id,
            "models": row.models,
            "rpm": row.rpm_limit,
            "tpm": row.tpm_limit,
            "concurrent": row.max_concurrent,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        }
    if as_json:
        typer.echo(orjson.dumps(info).decode())
        return
    console.print(
        f"Created key [bold]{info['id']}[/] for organisation [bold]{info['organization']}[/]."
    )
    console.print("Store this secret now; it will not be shown again:")
    console.print(f"  [bold green]{secret}[/]", soft_wrap=True)


@app.command("list")
def list_(
    org: Annotated[str | None, typer.Option(help="Only this organisation's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List keys (prefix only; secrets are never stored)."""
    with session_scope() as session:
        organization = accounts.get_org(session, org) if org else None
        names = {o.id: o.name for o in accounts.list_orgs(session)}
        rows: list[dict[str, Any]] = [
            {
                "id": k.id,
                "prefix": k.prefix,
                "organization": names.get(k.organization_id, k.organization_id),
                "name": k.name,
                "models": k.models,
                "rpm": k.rpm_limit,
                "tpm": k.tpm_limit,
                "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in accounts.list_keys(session, organization)
        ]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table(
        "id", "prefix", "organisation", "name", "models", "rpm", "tpm", "expires", "status"
    )
    for r in rows:
        status = "[red]revoked[/]" if r["revoked_at"] else "[green]active[/]"
        table.add_row(
            r["id"],
            r["prefix"] + "…",
            r["organization"],
            r["name"],
            ",".join(r["models"]) if r["models"] else "all",
            str(r["rpm"] or "-"),
            str(r["tpm"] or "-"),
            r["expires_at"] or "-",
            status,
        )
    console.print(table)


@app.command("revoke")
def revoke(
    key: Annotated[
        str, typer.Argument(help="Key id (key_...), its shown prefix (mm-...) or its secret.")
    ],
) -> None:
    """Revoke a key; every gateway process refuses it within a second."""
    with session_scope() as session:
        row = accounts.revoke_key(session, key)
        key_id = row.id
    console.print(f"Revoked {key_id}.")
