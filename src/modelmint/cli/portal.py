"""`modelmint portal link`: a single-use sign-in link to the customer portal."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from modelmint.cli.context import console, session_scope, settings
from modelmint.clock import utcnow
from modelmint.portal.links import create_link, parse_ttl

__all__ = ["portal"]

portal = typer.Typer(help="The customer portal: sign-in links.", no_args_is_help=True)


@portal.command("link")
def link(
    org: Annotated[str, typer.Option("--org", help="Organisation name or id.")],
    ttl: Annotated[str, typer.Option(help="How long the link works: 90s, 30m, 1h, 2d.")] = "1h",
    base_url: Annotated[
        str | None, typer.Option(help="The portal's public address (default: this server's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a link that signs one person in to the organisation's portal, once."""
    config = settings()
    lifetime = parse_ttl(ttl)
    with session_scope() as session:
        issued = create_link(session, org, lifetime, utcnow())
    url = issued.url(base_url or f"http://{config.host}:{config.port}")
    if as_json:
        typer.echo(
            orjson.dumps(
                {"organization": issued.organization, "url": url, "expires_at": issued.expires_at}
            ).decode()
        )
        return
    console.print(
        f"Sign-in link for {issued.organization} (works once, until "
        f"{issued.expires_at:%Y-%m-%d %H:%M} UTC):\n{url}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
