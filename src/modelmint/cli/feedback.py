"""`modelmint datasets`, `modelmint compare` and `modelmint samples`: the feedback loop
from the command line (thin adapters around ``modelmint.feedback``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
import typer
from rich.table import Table

from modelmint.cli.context import console, session_scope, settings
from modelmint.cli.values import instant
from modelmint.errors import InvalidRequest
from modelmint.feedback import samples as sample_store
from modelmint.feedback.compare import Comparison, VersionReport, compare_versions
from modelmint.feedback.datasets import BuildOptions, build_from_feedback, list_datasets
from modelmint.feedback.datasets import resolve_dataset as find_dataset
from modelmint.feedback.feedback import feedback_summary
from modelmint.storage.tables import FeedbackDataset
from modelmint.training.cards import FeedbackSummary
from modelmint.training.holdout import HeldOut

__all__ = ["compare_command", "datasets", "samples"]

datasets = typer.Typer(
    help="Training datasets built from customers' feedback.", no_args_is_help=True
)
samples = typer.Typer(
    help="Opt-in capture of served requests (PII redacted).", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _dataset_json(row: FeedbackDataset, *, with_requests: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": row.name,
        "version": row.version,
        "ref": f"dataset:{row.name}@{row.version}",
        "source_model": row.source_model,
        "format": row.format,
        "rows": row.rows,
        "data_hash": row.data_hash,
        "path": row.path,
        "filters": row.filters,
        "created_at": row.created_at.isoformat(),
    }
    if with_requests:
        out["request_ids"] = row.request_ids
    return out


@datasets.command("build")
def datasets_build(
    from_feedback: Annotated[
        str,
        typer.Option(
            "--from-feedback",
            help="Model whose feedback to use: its public (served) name or its registered name.",
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: the model's).")] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Keep uncorrected answers rated at least this.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only feedback from this ISO date.")] = None,
    target: Annotated[str, typer.Option(help="Label column of classifier datasets.")] = "label",
    as_json: JsonOption = False,
) -> None:
    """Write the next version of a dataset from a model's rated, captured requests."""
    options = BuildOptions(
        model=from_feedback,
        name=name,
        min_score=min_score,
        since=instant(since, option="--since"),
        target=target,
    )
    with session_scope() as session:
        info = _dataset_json(build_from_feedback(session, settings().home, options))
    if as_json:
        typer.echo(orjson.dumps(info).decode())
        return
    console.print(
        f"Built [bold]{info['ref']}[/]: {info['rows']} rows ({info['format']}) in {info['path']}, "
        f"{info['data_hash']}. Train on it: modelmint train RECIPE --data {info['ref']}"
    )


@datasets.command("list")
def datasets_list(
    name: Annotated[str | None, typer.Argument(help="Only this dataset's versions.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List datasets and their versions."""
    with session_scope() as session:
        rows = [_dataset_json(r) for r in list_datasets(session, name)]
    if as_json:
        typer.echo(orjson.dumps(rows).decode())
        return
    table = Table("dataset", "model", "format", "rows", "hash", "created")
    for r in rows:
        table.add_row(
            r["ref"], r["source_model"], r["format"], str(r["rows"]), r["data_hash"][:19],
            r["created_at"],
        )  # fmt: skip
    console.print(table)


@datasets.command("show")
def datasets_show(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION (or NAME for the newest).")],
    as_json: JsonOption = False,
) -> None:
    """Show one dataset version, including the request ids it came from."""
    with session_scope() as session:
        info = _dataset_json(find_dataset(session, ref), with_requests=True)
    if as_json:
        typer.echo(orjson.dumps(info).decode())
        return
    table = Table("field", "value", title=info["ref"])
    for key, value in info.items():
        shown = f"{len(value)} requests" if key == "request_ids" else str(value)
        table.add_row(key, shown)
    console.print(table)


# -- compare ---------------------------------------------------------------------------------


def _decimal(value: Any) -> str:
    return "-" if value is None else str(value)


def _version_json(r: VersionReport) -> dict[str, Any]:
    return {
        "version": r.version,
        "score": {
            "count": r.score.count,
            "mean": r.score.mean,
            "ci95": [r.score.low, r.score.high],
        },
        "metrics": r.metrics,
        "requests": r.requests,
        "errors": r.errors,
        "client_errors": r.client_errors,
        "error_rate": _decimal(r.error_rate),
        "avg_latency_ms": _decimal(r.avg_latency_ms),
        "currency": r.currency,
        "revenue": str(r.revenue),
        "cost": str(r.cost),
        "margin": str(r.margin),
        "revenue_per_1k": _decimal(r.per_1k(r.revenue)),
        "cost_per_1k": _decimal(r.per_1k(r.cost)),
        "margin_per_1k": _decimal(r.per_1k(r.margin)),
    }


def _held_out_json(held: HeldOut | None, note: str | None) -> dict[str, Any] | None:
    if held is None:
        return None if note is None else {"note": note}
    return {
        "source": held.source,
        "rows": held.rows,
        "left_out": held.left_out,
        "unchecked_versions": list(held.unchecked),
        "versions": [
            {
                "version": s.version,
                "accuracy": s.accuracy,
                "accuracy_ci95": [s.accuracy_low, s.accuracy_high],
                "f1_macro": s.f1_macro,
                "roc_auc": s.roc_auc,
            }
            for s in held.scores
        ],
    }


def _comparison_json(c: Comparison) -> dict[str, Any]:
    return {
        "model": c.model,
        "period": {"start": c.period.start.isoformat(), "end": c.period.end.isoformat()},
        "versions": [_version_json(r) for r in c.versions],
        "held_out": _held_out_json(c.held_out, c.held_out_note),
        "recommendation": {
            "action": c.recommendation.action,
            "rule": c.recommendation.rule,
            "reason": c.recommendation.reason,
        },
    }


def _print_comparison(data: dict[str, Any]) -> None:
    versions = data["versions"]
    table = Table("", *[f"v{v['version']}" for v in versions], title=f"{data['model']} versions")

    def score(v: dict[str, Any]) -> str:
        s = v["score"]
        if s["mean"] is None:
            return "no ratings"
        low, high = s["ci95"]
        ci = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
        return f"{s['mean']:.3f}{ci} (n={s['count']})"

    table.add_row("feedback score (95% CI)", *[score(v) for v in versions])
    held = data["held_out"]
    if held is not None and "rows" in held:
        _held_out_rows(table, held)
    metric_names = sorted({m for v in versions for m in v["metrics"]})[:8]
    for metric in metric_names:
        table.add_row(
            f"{metric} (own test split)", *[_metric(v["metrics"].get(metric)) for v in versions]
        )
    for field, label in (
        ("requests", "requests"),
        ("avg_latency_ms", "latency ms (mean)"),
        ("errors", "model errors (5xx)"),
        ("client_errors", "client errors (4xx)"),
        ("error_rate", "error rate (model)"),
        ("revenue_per_1k", "revenue / 1k req"),
        ("cost_per_1k", "cost / 1k req"),
        ("margin_per_1k", "margin / 1k req"),
    ):
        table.add_row(label, *[str(v[field]) for v in versions])
    table.add_row(
        "top correction",
        *[_top_correction(v["feedback"]["corrections"]) for v in versions],
    )
    table.add_row("latest comment", *[_latest_comment(v["feedback"]["comments"]) for v in versions])
    console.print(table)
    if held is not None:
        console.print(_held_out_line(held), highlight=False)
    rec = data["recommendation"]
    console.print(f"Recommendation: [bold]{rec['action']}[/] ({rec['reason']})")
    console.print(f"Rule: {rec['rule']}", highlight=False)


def _held_out_rows(table: Table, held: dict[str, Any]) -> None:
    def accuracy(v: dict[str, Any]) -> str:
        low, high = v["accuracy_ci95"]
        ci = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
        return f"{v['accuracy']:.3f}{ci}"

    scores = held["versions"]
    table.add_row(f"accuracy, shared held-out (n={held['rows']})", *[accuracy(v) for v in scores])
    table.add_row("F1 macro, shared held-out", *[_metric(v["f1_macro"]) for v in scores])
    table.add_row("ROC-AUC, shared held-out", *[_metric(v["roc_auc"]) for v in scores])


def _held_out_line(held: dict[str, Any]) -> str:
    if "rows" not in held:
        return f"Held-out: {held['note']}."
    line = f"Held-out: {held['rows']} rows, {held['source']}"
    if held["left_out"]:
        line += f"; {held['left_out']} left out because a compared version learned from them"
    if held["unchecked_versions"]:
        shown = ", ".join(f"v{v}" for v in held["unchecked_versions"])
        line += f"; could not check what {shown} learned from (its data is gone or changed)"
    return line + "."


def _latest_comment(comments: list[str]) -> str:
    if not comments:
        return "-"
    text = " ".join(comments[0].split())
    return text if len(text) <= 40 else text[:39] + "…"


def _summary_json(summary: FeedbackSummary) -> dict[str, Any]:
    """The model card's feedback section as data: volume, daily trend, corrections."""
    return {
        "volume": summary.volume,
        "mean_score": summary.mean_score,
        "scale": summary.scale,
        "trend": [
            {"period": p.period, "mean_score": p.mean_score, "count": p.count}
            for p in summary.trend
        ],
        "corrections": [{"correction": text, "times": n} for text, n in summary.corrections],
        "comments": list(summary.comments),
    }


def _top_correction(corrections: list[dict[str, Any]]) -> str:
    if not corrections:
        return "-"
    top = corrections[0]
    return f"{str(top['correction'])[:30]} (x{top['times']})"


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def compare_command(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    versions: Annotated[str, typer.Option(help="Comma-separated versions, e.g. 3,4.")],
    held_out: Annotated[
        bool,
        typer.Option(
            help="Measure every classifier version on the same held-out rows (the oldest "
            "version's test split, less any row a compared version learned from)."
        ),
    ] = True,
    eval_data: Annotated[
        str | None,
        typer.Option(help="Labelled rows (file or dataset:NAME@V) to measure every version on."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compare versions on feedback, shared held-out rows, offline metrics, latency,
    errors and money, and recommend promote / keep / roll back."""
    try:
        numbers = [int(v) for v in versions.split(",") if v.strip()]
    except ValueError:
        raise InvalidRequest(f"--versions {versions!r}: give numbers such as 3,4") from None
    with session_scope() as session:
        comparison = compare_versions(
            session, model, numbers, held_out=held_out, eval_data=eval_data
        )
        data = _comparison_json(comparison)
        for shown, report in zip(data["versions"], comparison.versions, strict=True):
            shown["feedback"] = _summary_json(feedback_summary(session, report.version_id))
    if as_json:
        typer.echo(orjson.dumps(data).decode())
        return
    _print_comparison(data)


# -- samples ---------------------------------------------------------------------------------


@samples.command("config")
def samples_config(
    subject: Annotated[str, typer.Argument(help="Organisation name/id, or key id with --key.")],
    retention_days: Annotated[
        int, typer.Option("--retention-days", help="Days samples are kept.")
    ] = 30,
    key: Annotated[bool, typer.Option("--key", help="SUBJECT is an API key id.")] = False,
    off: Annotated[bool, typer.Option("--off", help="Stop capturing for SUBJECT.")] = False,
) -> None:
    """Opt an organisation or key in to sample capture (or out, with --off)."""
    scope: Literal["organization", "key"] = "key" if key else "organization"
    with session_scope() as session:
        if off:
            removed = sample_store.remove_policy(session, scope, subject)
            console.print(f"Capture for {subject}: {'off' if removed else 'was not on'}.")
            return
        sample_store.set_policy(session, scope, subject, retention_days)
    console.print(f"Capturing samples of {scope} {subject}, kept {retention_days} days.")


@samples.command("purge")
def samples_purge() -> None:
    """Delete samples past their retention now (the gateway also does it hourly)."""
    with session_scope() as session:
        deleted = sample_store.purge_expired(session)
    console.print(f"Deleted {deleted} expired samples.")
