"""`modelmint models`: list served models, add remote upstreams, retire names."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from modelmint import registry
from modelmint.cli.context import console, session_scope

app = typer.Typer(help="List, add and remove served models.", no_args_is_help=True)


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Public model names and the deployments behind them."""
    with session_scope() as session:
        routes = registry.load_routes(session)
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "task": route.task,
            "model": d.model_name,
            "version": d.version,
            "backend": d.backend,
            "target": d.artifact_uri,
            "weight": d.weight,
            "fallback": d.fallback,
        }
        for name, route in sorted(routes.items())
        for d in route.deployments
    ]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table("name", "task", "model@version", "backend", "target", "weight", "fallback")
    for r in rows:
        table.add_row(
            r["name"],
            r["task"],
            f"{r['model']}@{r['version']}",
            r["backend"],
            r["target"],
            str(r["weight"]),
            r["fallback"] or "-",
        )
    console.print(table)


@app.command("add-remote")
def add_remote(
    name: Annotated[str, typer.Argument(help="Public model name clients will call.")],
    base_url: Annotated[str, typer.Option(help="Upstream base URL, e.g. http://host:8000/v1")],
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the upstream's API key.")
    ] = None,
    upstream_model: Annotated[
        str | None, typer.Option(help="Model name to send upstream (default: NAME).")
    ] = None,
    task: Annotated[str, typer.Option(help="chat or embedding.")] = "chat",
    fallback: Annotated[
        str | None, typer.Option(help="Public model to use when this upstream fails.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Read timeout, seconds.")] = None,
    max_retries: Annotated[
        int | None, typer.Option(help="Retries on connect errors and 5xx.")
    ] = None,
) -> None:
    """Serve an OpenAI-compatible upstream (vLLM, TGI, Ollama, llama.cpp, OpenAI) as NAME."""
    with session_scope() as session:
        deployment = registry.add_remote_model(
            session,
            name,
            base_url=base_url,
            api_key_env=api_key_env,
            upstream_model=upstream_model,
            task=task,
            fallback=fallback,
            timeout_s=timeout,
            max_retries=max_retries,
        )
        dep_id = deployment.id
    console.print(f"Model [bold]{name}[/] now routes to {base_url} (deployment {dep_id}).")


@app.command("remove")
def remove(name: Annotated[str, typer.Argument(help="Public model name.")]) -> None:
    """Stop serving NAME. Its versions and past usage are kept."""
    with session_scope() as session:
        count = registry.remove_public_name(session, name)
    console.print(f"Retired {count} deployment(s) of {name}.")
