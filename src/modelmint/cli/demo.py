"""`modelmint demo traffic`: demo customers and a month of traffic, through the gateway."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from modelmint.cli.context import console, settings
from modelmint.demo.replay import DemoSettings, run_demo
from modelmint.errors import InvalidRequest

__all__ = ["demo"]

demo = typer.Typer(help="Demo data for a new installation.", no_args_is_help=True)


@demo.command("traffic")
def traffic(
    days: Annotated[int, typer.Option(min=1, max=365, help="Days of history to create.")] = 30,
    orgs: Annotated[int, typer.Option(min=1, max=200, help="Demo organisations.")] = 20,
    requests: Annotated[
        int, typer.Option(min=1, max=100_000, help="Requests to send in all (keeps it fast).")
    ] = 2000,
    base_url: Annotated[
        str | None, typer.Option(help="The running server (default: MODELMINT_HOST:PORT).")
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(help="Admin token (default: MODELMINT_ADMIN_TOKEN).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 8,
    seed: Annotated[int, typer.Option(help="Same seed, same customers and traffic.")] = 7,
) -> None:
    """Create labelled demo organisations (demo-*) on the demo plans and replay a month of
    realistic traffic through the gateway's HTTP API, so the reports and the dashboard
    have something to show.

    Requests are dated in the past only if the server runs with
    MODELMINT_DEMO_TIME_TRAVEL=true; otherwise they are all dated now.
    """
    config = settings()
    token = admin_token or (
        config.admin_token.get_secret_value() if config.admin_token is not None else None
    )
    if not token:
        raise InvalidRequest(
            "an admin token is needed: --admin-token, or MODELMINT_ADMIN_TOKEN (`modelmint up` "
            "prints the one it generated)",
            param="admin_token",
        )
    url = base_url or f"http://{config.host}:{config.port}"
    run = DemoSettings(url, token, days=days, organizations=orgs, requests=requests,
                       concurrency=concurrency, seed=seed)  # fmt: skip
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("Setting up demo customers", total=None)

        def planned(total: int) -> None:
            progress.update(task, description="Replaying traffic", total=total)

        result = asyncio.run(
            run_demo(run, on_plan=planned, progress=lambda n: progress.advance(task, n))
        )
    by_status = ", ".join(
        f"{status or 'no answer'}: {n}" for status, n in sorted(result.statuses.items())
    )
    console.print(
        f"Sent {result.sent} requests for {len(result.organizations)} demo organisations "
        f"({by_status}).",
        highlight=False,
    )
    if result.backdated:
        console.print(f"Dated from {result.window_start:%Y-%m-%d} on, as if over {days} days.")
    else:
        console.print(
            "The server did not date them in the past (start it with "
            "MODELMINT_DEMO_TIME_TRAVEL=true for a month of history): all are dated now."
        )
    console.print("See them with: modelmint report revenue --by org")
