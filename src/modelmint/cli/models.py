"""`modelmint models` and `modelmint deploy`: the registry and what it serves.

List served names, show versions with their metrics and cards, move aliases, set
serving costs, add remote upstreams, retire names; deploy versions with canaries.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import orjson
import typer
from rich.markdown import Markdown
from rich.table import Table

from modelmint import registry
from modelmint.cli.context import console, session_scope
from modelmint.errors import InvalidRequest
from modelmint.registry import deployment_status, rollout, versions
from modelmint.registry.catalog import ServingCosts

app = typer.Typer(help="List, add and remove served models.", no_args_is_help=True)


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Public model names, the deployments behind them, and whether each one serves
    (serving, starting, or failed with the reason)."""
    with session_scope() as session:
        statuses = deployment_status.deployment_statuses(session)
    rows: list[dict[str, Any]] = [
        {
            "name": d.public_name,
            "task": d.task,
            "model": d.model_name,
            "version": d.version,
            "backend": d.backend,
            "target": d.target,
            "weight": d.weight,
            "fallback": d.fallback,
            "status": d.status,
            "error": d.error,
        }
        for d in statuses
    ]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table(
        "name", "task", "model@version", "backend", "target", "weight", "fallback", "status"
    )
    for r in rows:
        table.add_row(
            r["name"],
            r["task"],
            f"{r['model']}@{r['version']}",
            r["backend"],
            r["target"],
            str(r["weight"]),
            r["fallback"] or "-",
            f"failed: {r['error']}" if r["status"] == "failed" else r["status"],
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


def _amount(text: str | None, option: str) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise InvalidRequest(f"{option} must be a decimal amount, got {text!r}") from None
    return value


def serving_costs(
    per_hour: str | None, per_1m_input: str | None, per_1m_output: str | None
) -> ServingCosts | None:
    if per_hour is None and per_1m_input is None and per_1m_output is None:
        return None
    return ServingCosts(
        _amount(per_hour, "--cost-per-hour"),
        _amount(per_1m_input, "--cost-per-1m-input"),
        _amount(per_1m_output, "--cost-per-1m-output"),
    )


CostPerHour = Annotated[
    str | None,
    typer.Option(
        "--cost-per-hour",
        help="Hardware cost per hour, e.g. 0.40; shared among requests by engine time.",
    ),
]
CostPer1MInput = Annotated[
    str | None,
    typer.Option("--cost-per-1m-input", help="Upstream price per million input tokens."),
]
CostPer1MOutput = Annotated[
    str | None,
    typer.Option("--cost-per-1m-output", help="Upstream price per million output tokens."),
]


@app.command("cost")
def cost(
    name: Annotated[str, typer.Argument(help="Public model name.")],
    per_hour: CostPerHour = None,
    per_1m_input: CostPer1MInput = None,
    per_1m_output: CostPer1MOutput = None,
) -> None:
    """Set what serving NAME costs; every later request's cost follows from it."""
    costs = serving_costs(per_hour, per_1m_input, per_1m_output)
    if costs is None:
        raise InvalidRequest("give at least one of --cost-per-hour, --cost-per-1m-input/output")
    with session_scope() as session:
        count = rollout.set_serving_costs(session, name, costs)
    console.print(f"Costs of {name} set on {count} deployment(s).")


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME (all versions) or NAME@VERSION|@ALIAS.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    card: Annotated[bool, typer.Option("--card", help="Print the model card.")] = False,
) -> None:
    """A registered model's versions, aliases, metrics and lineage."""
    parsed = versions.parse_ref(ref)
    with session_scope() as session:
        aliases = versions.aliases_of(session, parsed.name)
        if parsed.version is None and parsed.alias is None:
            rows = versions.list_versions(session, parsed.name)
        else:
            rows = [versions.resolve(session, parsed)[1]]
        by_version = {v: [a for a, n in aliases.items() if n == v] for v in aliases.values()}
        data = [_version_row(v, by_version.get(v.version, [])) for v in rows]
        if card:
            for row, version in zip(data, rows, strict=True):
                row["card"] = _with_feedback(session, version.id, row["card"])
    if as_json:
        typer.echo(orjson.dumps(data).decode())
        return
    if card:
        for row in data:
            console.print(Markdown(row["card"] or f"_{parsed.name}@{row['version']} has no card_"))
        return
    table = Table("version", "aliases", "recipe", "format", "metrics", "data", "created")
    for row in data:
        table.add_row(
            str(row["version"]),
            ", ".join(row["aliases"]) or "-",
            row["recipe"] or "-",
            row["format"],
            _headline(row["metrics"]),
            (row["data_hash"] or "-")[:19],
            row["created_at"][:19],
        )
    console.print(table)


def _with_feedback(session: Any, version_id: str, card: str) -> str:
    """The stored card plus what users have said about the version since it was served."""
    from modelmint.feedback.feedback import feedback_summary
    from modelmint.training.cards import feedback_section

    summary = feedback_summary(session, version_id)
    if not card or summary.volume == 0:
        return card
    return card.rstrip() + "\n\n" + feedback_section(summary)


def _version_row(version: Any, aliases: list[str]) -> dict[str, Any]:
    return {
        "version": version.version,
        "aliases": sorted(aliases),
        "recipe": version.recipe,
        "format": version.format,
        "artifact_uri": version.artifact_uri,
        "params": version.params,
        "metrics": version.metrics,
        "data_hash": version.data_hash,
        "lineage": version.lineage,
        "card": version.card,
        "created_at": version.created_at.isoformat(),
    }


def _headline(metrics: dict[str, Any]) -> str:
    """The scalar metrics worth a glance in a table cell."""
    shown = [
        f"{k}={v:.4g}"
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    return " ".join(shown[:4]) or "-"


@app.command("promote")
def promote(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME@ALIAS) to point at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
    note: Annotated[str, typer.Option(help="Why; kept in the alias history.")] = "",
) -> None:
    """Move an alias (default: production) to a version; the history is kept."""
    with session_scope() as session:
        move = versions.move_alias(session, ref, alias, note)
    was = f" (was version {move.from_version})" if move.from_version else ""
    name = versions.parse_ref(ref).name
    console.print(f"{name}@{alias} -> version {move.to_version}{was}.")


@app.command("history")
def history(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every alias move of a model, oldest first."""
    with session_scope() as session:
        moves = versions.alias_history(session, name)
    rows: list[dict[str, Any]] = [
        {
            "alias": m.alias,
            "from": m.from_version,
            "to": m.to_version,
            "moved_at": m.moved_at.isoformat(),
            "note": m.note,
        }
        for m in moves
    ]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table("moved at", "alias", "from", "to", "note")
    for r in rows:
        table.add_row(
            r["moved_at"][:19], r["alias"], str(r["from"] or "-"), str(r["to"]), r["note"]
        )
    console.print(table)


def deploy_command(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS to serve.")],
    public_name: Annotated[
        str | None, typer.Option("--as", help="Public model name (default: NAME).")
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(help="Another version taking a share of traffic, e.g. 4:10%."),
    ] = None,
    per_hour: CostPerHour = None,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Inputs per batch (classifiers, recommenders).")
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="Longest wait for a batch to fill, ms.")
    ] = None,
) -> None:
    """Serve a registered version through the gateway, replacing what served the name."""
    parsed = versions.parse_ref(ref)
    config: dict[str, object] = {}
    if max_batch_size is not None:
        config["max_batch_size"] = max_batch_size
    if max_wait_ms is not None:
        config["max_wait_ms"] = max_wait_ms
    with session_scope() as session:
        result = rollout.deploy_version(
            session,
            parsed,
            public_name=public_name or parsed.name,
            canary=rollout.parse_canary(canary, parsed.name) if canary else None,
            costs=serving_costs(per_hour, None, None),
            config=config,
        )
    split = ", ".join(f"{m}@{v} {w}%" for m, v, w in result.versions)
    # Gateways start it within a second or so; if it cannot start, they keep what
    # served the name before. Only `models list` can say which happened.
    console.print(
        f"[bold]{result.public_name}[/] deployed: {split}. Running gateways switch to it once "
        "it starts; `modelmint models list` shows whether it serves."
    )
