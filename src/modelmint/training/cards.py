"""Model cards: what a registered version is for, what it was trained on and how
well it does, in Markdown generated from the run's report.

The card reads per-class and per-group metrics and feature importances wherever the
recipe's metrics put them (keys ``per_class``, ``per_group`` and
``feature_importances`` at any depth), so a new recipe gets those sections by naming
its metrics that way. The feedback section is filled from a ``FeedbackSummary``
once users' ratings of the served version exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelmint.training.reports import (
    RunReport,
    format_value,
    markdown_table,
    metrics_markdown,
    params_markdown,
)

__all__ = ["FeedbackSummary", "ScorePoint", "feedback_section", "model_card"]

_SECTION_KEYS = ("per_class", "per_group", "feature_importances")
# A card lists the strongest features; the full list stays in the report.
_TOP_FEATURES = 20
_BAR_WIDTH = 20


@dataclass(frozen=True, slots=True)
class ScorePoint:
    """Feedback over one period: its label (a day, a week), mean score and count."""

    period: str
    mean_score: float
    count: int


@dataclass(frozen=True, slots=True)
class FeedbackSummary:
    """What users said about the served version."""

    volume: int
    mean_score: float | None = None
    trend: Sequence[ScorePoint] = ()
    # The most frequent corrected outputs or labels and how often each was given.
    corrections: Sequence[tuple[str, int]] = ()
    scale: str = ""  # e.g. "1-5" or "thumbs (1 = up)"
    comments: Sequence[str] = ()  # the raters' latest comments, newest first


def model_card(
    report: RunReport,
    *,
    name: str,
    version: int | str,
    intended_use: str,
    limitations: str | Sequence[str],
    feedback: FeedbackSummary | None = None,
) -> str:
    """The Markdown model card of version ``version`` of ``name``."""
    sections = [
        f"# {name} v{version}",
        _overview(report),
        "## Intended use",
        intended_use.strip(),
        "## Limitations",
        _limitations(limitations),
        "## Training data",
        _data(report),
        "## Evaluation",
        _evaluation(report),
    ]
    sections += _found_sections(report.metrics)
    sections += ["## Training parameters", params_markdown(report.params)]
    if report.tuning:
        sections += [_tuning(report.tuning)]
    if report.compression or report.onnx:
        sections += ["## Compression and export", _compression_and_export(report)]
    if feedback is not None:
        sections += ["## Feedback", _feedback(feedback)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _overview(report: RunReport) -> str:
    task = f" ({report.task})" if report.task else ""
    return (
        f"Trained by the `{report.recipe}` recipe{task} on "
        f"{report.finished_at.date().isoformat()}; data hash `{report.data_hash}`."
    )


def _limitations(limitations: str | Sequence[str]) -> str:
    if isinstance(limitations, str):
        return limitations.strip()
    return "\n".join(f"- {item}" for item in limitations)


def _data(report: RunReport) -> str:
    rows: list[list[Any]] = [
        ["Source", report.data_source],
        ["Hash", f"`{report.data_hash}`"],
        *[[f"{split} rows", size] for split, size in report.split_sizes.items()],
    ]
    return markdown_table(["", ""], rows)


def _evaluation(report: RunReport) -> str:
    parts = [
        "Measured on the held-out test split:",
        metrics_markdown(_without_sections(report.metrics)),
    ]
    cv = report.cv
    if cv and cv.get("mean"):
        std: Mapping[str, float] = cv.get("std", {})
        rows = [
            [metric, f"{format_value(mean)} ± {format_value(std.get(metric, 0.0))}"]
            for metric, mean in cv["mean"].items()
        ]
        parts += [
            f"{cv.get('k', '?')}-fold cross-validation (mean ± std):",
            markdown_table(["Metric", "Score"], rows),
        ]
    return "\n\n".join(parts)


def _without_sections(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics minus what gets a section of its own."""
    kept: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in _SECTION_KEYS:
            continue
        kept[key] = _without_sections(value) if isinstance(value, Mapping) else value
    return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}


def _found_sections(metrics: Mapping[str, Any]) -> list[str]:
    sections: list[str] = []
    for path, key, value in _find(metrics, ""):
        where = f" ({path.rstrip('.')})" if path else ""
        if key == "per_class" and isinstance(value, Mapping):
            sections += [f"## Per-class metrics{where}", _nested_tables(value, "Class")]
        elif key == "per_group" and isinstance(value, Mapping):
            sections += [f"## Per-group metrics{where}", _nested_tables(value, "Group")]
        elif key == "feature_importances" and isinstance(value, Mapping | list):
            sections += [f"## Feature importances{where}", _importances(_by_feature(value))]
    return sections


def _find(metrics: Mapping[str, Any], path: str) -> list[tuple[str, str, Any]]:
    found: list[tuple[str, str, Any]] = []
    for key, value in metrics.items():
        if key in _SECTION_KEYS:
            found.append((path, key, value))
        elif isinstance(value, Mapping):
            found += _find(value, f"{path}{key}.")
    return found


def _nested_tables(table: Mapping[str, Any], label: str) -> str:
    """Rows of metrics per class/group; per-group metrics may first be keyed by the
    group column (``{"region": {"north": {...}}}``), giving one table per column."""
    if all(isinstance(row, Mapping) and not _has_mappings(row) for row in table.values()):
        return _rows_table(table, label)
    parts = []
    for column, groups in table.items():
        if isinstance(groups, Mapping):
            parts.append(f"**{column}**\n\n{_rows_table(groups, label)}")
    return "\n\n".join(parts)


def _has_mappings(row: Mapping[str, Any]) -> bool:
    return any(isinstance(v, Mapping) for v in row.values())


def _rows_table(table: Mapping[str, Any], label: str) -> str:
    columns: list[str] = []
    for row in table.values():
        if isinstance(row, Mapping):
            columns += [c for c in row if c not in columns]
    rows = [
        [str(name), *(row.get(c) for c in columns)]
        for name, row in table.items()
        if isinstance(row, Mapping)
    ]
    return markdown_table([label, *columns], rows)


def _by_feature(value: Mapping[str, Any] | list[Any]) -> Mapping[str, Any]:
    """Importances as ``{feature: value}``, also from a list of
    ``{"feature": name, "mean": value, ...}`` rows (permutation importance with spread)."""
    if isinstance(value, Mapping):
        return value
    return {
        str(row["feature"]): row.get("mean", row.get("importance"))
        for row in value
        if isinstance(row, Mapping) and "feature" in row
    }


def _importances(importances: Mapping[str, Any]) -> str:
    numeric = [
        (str(name), float(value))
        for name, value in importances.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    ranked = sorted(numeric, key=lambda item: (-abs(item[1]), item[0]))
    largest = max((abs(v) for _, v in ranked), default=0.0)
    rows = [
        [name, value, "█" * round(_BAR_WIDTH * abs(value) / largest) if largest else ""]
        for name, value in ranked[:_TOP_FEATURES]
    ]
    table = markdown_table(["Feature", "Importance", ""], rows)
    hidden = len(ranked) - _TOP_FEATURES
    return table + (f"\n\n…and {hidden} more features." if hidden > 0 else "")


def _tuning(tuning: Mapping[str, Any]) -> str:
    listed = tuning.get("trials")
    trials: list[Mapping[str, Any]] = listed if isinstance(listed, list) else []
    count = len(trials) if trials else listed
    pruned = sum(t.get("state") == "pruned" for t in trials)
    return (
        f"Tuned with {count} Optuna trials ({pruned} pruned early): best "
        f"{tuning.get('metric')} {format_value(tuning.get('best_value'))} on validation data "
        f"with {format_value(tuning.get('best_params', {}))}."
    )


def _compression_and_export(report: RunReport) -> str:
    lines = []
    for c in report.compression:
        metric = c.get("metric", "metric")
        sparsity = (
            f", {format_value(c['sparsity'])} of weights zero"
            if c.get("sparsity") is not None
            else ""
        )
        kept = " (this version is the compressed one)" if c.get("kept") else ""
        lines.append(
            f"- {c.get('method')}: {metric} {_change(c, 'metric')}, latency "
            f"{_change(c, 'latency_ms')} ms per batch of {c.get('batch_size')}, state dict "
            f"{_change(c, 'size_bytes')} bytes{sparsity}{kept}."
        )
    onnx = report.onnx
    if onnx:
        batches = ", ".join(str(b) for b in onnx.get("batch_sizes", []))
        lines.append(
            f"- ONNX (opset {onnx.get('opset')}, {onnx.get('exporter')} exporter): max absolute "
            f"difference from torch {format_value(onnx.get('max_abs_diff'))} on batches of "
            f"{batches} (tolerance {format_value(onnx.get('tolerance'))})."
        )
        lines += [f"  - Note: {note}" for note in onnx.get("notes", [])]
    return "\n".join(lines)


def _change(report: Mapping[str, Any], key: str) -> str:
    before, after = report.get(f"{key}_before"), report.get(f"{key}_after")
    return f"{format_value(before)} → {format_value(after)}"


def feedback_section(feedback: FeedbackSummary) -> str:
    """The card's "Feedback" section on its own: feedback arrives after a version is
    registered, so cards shown later append it to the stored card."""
    return "## Feedback\n\n" + _feedback(feedback) + "\n"


def _feedback(feedback: FeedbackSummary) -> str:
    scale = f" on a {feedback.scale} scale" if feedback.scale else ""
    mean = (
        f", mean score {format_value(feedback.mean_score)}{scale}"
        if feedback.mean_score is not None
        else ""
    )
    parts = [f"{feedback.volume:,} ratings{mean}."]
    if feedback.trend:
        rows = [[p.period, p.mean_score, p.count] for p in feedback.trend]
        parts += ["Score trend:", markdown_table(["Period", "Mean score", "Ratings"], rows)]
    if feedback.corrections:
        rows = [[text, count] for text, count in feedback.corrections]
        parts += ["Most common corrections:", markdown_table(["Correction", "Times"], rows)]
    if feedback.comments:
        rows = [[_one_line(text)] for text in feedback.comments]
        parts += ["Latest comments:", markdown_table(["Comment"], rows)]
    return "\n\n".join(parts)


def _one_line(text: str, limit: int = 300) -> str:
    """A comment as one table cell: line breaks would end the Markdown row."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
