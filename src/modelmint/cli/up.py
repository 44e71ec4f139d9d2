"""`modelmint up`: migrate, seed the bundled models, a demo key and demo billing, serve."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from sqlalchemy import select

from modelmint import accounts, registry
from modelmint.cli.context import console, open_database
from modelmint.cli.context import settings as load_settings
from modelmint.config import Settings
from modelmint.demo.billing import seed_demo_billing
from modelmint.errors import Conflict, InvalidRequest
from modelmint.observability.logs import configure_logging
from modelmint.storage.tables import ApiKey

DEMO_ORG = "demo"
DEMO_KEY_NAME = "demo"


@dataclass(frozen=True)
class Seeded:
    """What this start created: secrets are shown once, so only new ones are here."""

    secret: str | None  # the demo key, if made now
    prefix: str | None  # the demo key's prefix, if it existed already
    billing_keys: list[dict[str, Any]] = field(default_factory=list)


def _seed(config: Settings) -> Seeded:
    """Register bundled models (costed at MODELMINT_LOCAL_COST_PER_HOUR), the demo
    organisation and the billing demo."""
    database = open_database(config)
    try:
        with database.session() as session:
            if config.load_bundled_models:
                registry.register_bundled_models(session, config.local_cost_per_hour)
            billing_keys = seed_demo_billing(session)["keys"]
            org = accounts.ensure_org(session, DEMO_ORG)
            existing = session.scalar(
                select(ApiKey).where(
                    ApiKey.organization_id == org.id,
                    ApiKey.name == DEMO_KEY_NAME,
                    ApiKey.revoked_at.is_(None),
                )
            )
            if existing is not None:
                return Seeded(None, existing.prefix, billing_keys)
            _, secret = accounts.create_key(session, org, name=DEMO_KEY_NAME)
            return Seeded(secret, None, billing_keys)
    finally:
        database.dispose()


def _banner(config: Settings, seeded: Seeded, admin: str | None) -> None:
    base = f"http://{config.host}:{config.port}/v1"
    secret, prefix = seeded.secret, seeded.prefix
    shown = secret or "<your key>"
    console.rule("[bold]ModelMint")
    if secret:
        console.print("Demo API key (shown once, store it now):")
        console.print(f"  [bold green]{secret}[/]", soft_wrap=True)
    else:
        console.print(
            f"The demo key was created on an earlier run ({prefix}…); secrets are not stored. "
            "Make another with: [bold]modelmint keys create --org demo[/]"
        )
    if seeded.billing_keys:
        console.print("Billing demo customers (keys shown once):")
        for key in seeded.billing_keys:
            console.print(f"  {key['organization']}: [bold green]{key['key']}[/]", soft_wrap=True)
    console.print(
        "Plans free, starter, payg and enterprise are seeded; demo-subscription is on "
        "starter, demo-prepaid on payg with 5.00 USD of credit. Invoices: "
        "[bold]modelmint invoices close --period YYYY-MM[/]"
    )
    if admin:
        console.print(
            "Admin token for /admin (generated for this run; set MODELMINT_ADMIN_TOKEN "
            "to choose one):"
        )
        console.print(f"  [bold yellow]{admin}[/]", soft_wrap=True)
    console.print("\nTry it with curl:")
    console.print(
        f"  curl {base}/chat/completions -H 'Authorization: Bearer {shown}' "
        "-H 'Content-Type: application/json' "
        '-d \'{"model": "smollm2-135m-instruct", "messages": '
        '[{"role": "user", "content": "Say hello"}]}\'',
        soft_wrap=True,
        highlight=False,
    )
    console.print("\nor with the openai SDK:")
    console.print(
        "  from openai import OpenAI\n"
        f'  client = OpenAI(base_url="{base}", api_key="{shown}")\n'
        '  reply = client.chat.completions.create(model="smollm2-135m-instruct",\n'
        '      messages=[{"role": "user", "content": "Say hello"}])\n'
        "  print(reply.choices[0].message.content, reply.usage)\n"
        '  emb = client.embeddings.create(model="all-minilm-l6-v2", input="hello")',
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"\nDashboard: http://{config.host}:{config.port}/dashboard (log in with the admin "
        "token). Fill it with demo customers and traffic:\n"
        "  modelmint demo traffic --days 30 --orgs 20",
        soft_wrap=True,
        highlight=False,
    )
    if config.load_bundled_models:
        # Margins are only as true as this rate: say which one they assume.
        console.print(
            f"Bundled models without a rate of yours cost {config.local_cost_per_hour} per "
            "machine hour (MODELMINT_LOCAL_COST_PER_HOUR); set yours with: "
            "modelmint models cost NAME --cost-per-hour ...",
            soft_wrap=True,
            highlight=False,
        )
    console.print(
        f"\nServing on http://{config.host}:{config.port} (models load first; "
        f"GET /readyz says when). Ctrl-C stops."
    )
    console.rule()


def _check_port(host: str, port: int) -> None:
    """Refuse to start, before anything is loaded, on an address we cannot listen on.

    Models take a while to load; finding out only after that (and after the banner has
    said "Serving on ...") that another process holds the port wastes the wait and hides
    the reason in a log line. Something could still take the port in the instant between
    this check and the server's bind; the server then fails as before.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the server will bind: a port left in TIME_WAIT by a server that just
        # stopped is free, one another process listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Conflict(
                    f"port {port} on {host} is already in use (another modelmint up?); "
                    "stop it or choose another port with --port or MODELMINT_PORT",
                    param="port",
                ) from None
            raise InvalidRequest(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}", param="host"
            ) from None


def _prepare_metrics_dir(config: Settings) -> None:
    """Worker processes share Prometheus metrics through files in one fresh folder."""
    folder = config.home / "prometheus"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder.resolve())


def up(
    host: Annotated[str | None, typer.Option(help="Bind address (MODELMINT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (MODELMINT_PORT).")] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Gateway worker processes (use PostgreSQL beyond one).")
    ] = 1,
) -> None:
    """Start the platform: migrate the database, register the bundled models, create a
    demo organisation and key, and serve the OpenAI-compatible API."""
    import uvicorn

    config = load_settings()
    if host:
        os.environ["MODELMINT_HOST"] = host
    if port:
        os.environ["MODELMINT_PORT"] = str(port)
    generated_admin = None
    if config.admin_token is None:
        generated_admin = secrets.token_urlsafe(24)
        # Workers read their settings from the environment: hand them the same token.
        os.environ["MODELMINT_ADMIN_TOKEN"] = generated_admin
    config = load_settings()
    _check_port(config.host, config.port)
    configure_logging(config.log_level, json_lines=config.log_json and not sys.stderr.isatty())
    seeded = _seed(config)
    if workers > 1:
        _prepare_metrics_dir(config)
    _banner(config, seeded, generated_admin)
    uvicorn.run(
        "modelmint.server:app_from_env",
        factory=True,
        workers=workers,
        host=config.host,
        port=config.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
