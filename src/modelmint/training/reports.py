"""The record of one training run, as JSON for machines and Markdown for people.

A ``RunReport`` holds plain JSON data (the ``to_dict()`` of tuning, compression and
ONNX results, not the objects), so a report read back from a registered version is
the same report that was written. ``to_markdown`` lays every part out as tables:
scalar metrics in one table, per-class style metrics (a mapping of mappings) as a
table per mapping, confusion matrices as matrices.

The Markdown helpers (``markdown_table``, ``format_value``, ``metrics_markdown``)
are shared with model cards.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, TypeGuard

__all__ = [
    "RunReport",
    "compression_markdown",
    "cv_markdown",
    "format_value",
    "library_versions",
    "markdown_table",
    "metrics_markdown",
    "onnx_markdown",
    "params_markdown",
    "tuning_markdown",
]

_VERSIONED = ("modelmint", "torch", "scikit-learn", "numpy", "optuna", "onnxruntime", "onnx")
# Lists longer than this are cut in tables: a report is read, not parsed.
_MAX_INLINE_ITEMS = 12
# Keys whose sibling list names the rows and columns of a confusion matrix.
_LABEL_KEYS = ("labels", "classes", "class_names")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's numbers depend on (without
    importing them: reading package metadata is enough)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(slots=True)
class RunReport:
    """Everything one ``modelmint train`` run produced, except the artifact itself."""

    recipe: str
    params: dict[str, Any]
    data_source: str
    data_hash: str
    split_sizes: dict[str, int]
    metrics: dict[str, Any]
    started_at: datetime
    finished_at: datetime
    task: str = ""
    cv: Mapping[str, Any] | None = None
    tuning: Mapping[str, Any] | None = None
    compression: list[dict[str, Any]] = field(default_factory=list)
    onnx: dict[str, Any] | None = None
    # Wall-clock seconds per stage (load, fit, evaluate, cv, tune, compress, export...).
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)

    @classmethod
    def empty(cls, recipe: str) -> RunReport:
        """A report of a run that produced nothing to report (a non-main rank under
        torchrun, which leaves evaluation to rank 0)."""
        now = datetime.now(UTC)
        return cls(recipe, {}, "", "", {}, {}, started_at=now, finished_at=now)

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        data["finished_at"] = self.finished_at.isoformat()
        return data

    def to_json(self) -> str:
        # default=str keeps a stray Path or Decimal in params from failing the run.
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["started_at"] = datetime.fromisoformat(str(data["started_at"]))
        values["finished_at"] = datetime.fromisoformat(str(data["finished_at"]))
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> RunReport:
        return cls.from_dict(json.loads(text))

    def to_markdown(self) -> str:
        sections = [
            f"# Training run: {self.recipe}",
            self._summary(),
            "## Metrics (test split)",
            metrics_markdown(self.metrics),
        ]
        if self.cv:
            sections += [
                f"## Cross-validation ({self.cv.get('k', '?')} folds)",
                cv_markdown(self.cv),
            ]
        if self.tuning:
            sections += ["## Tuning", tuning_markdown(self.tuning)]
        if self.compression:
            sections += ["## Compression", compression_markdown(self.compression)]
        if self.onnx:
            sections += ["## ONNX export", onnx_markdown(self.onnx)]
        sections += ["## Parameters", params_markdown(self.params)]
        if self.timings:
            rows = [[stage, f"{seconds:.2f}"] for stage, seconds in self.timings.items()]
            rows.append(["total", f"{self.duration_s:.2f}"])
            sections += ["## Timings", markdown_table(["Stage", "Seconds"], rows)]
        sections += [
            "## Versions",
            markdown_table(["Package", "Version"], [[k, v] for k, v in self.versions.items()]),
        ]
        return "\n\n".join(sections) + "\n"

    def _summary(self) -> str:
        rows = [
            ["Recipe", self.recipe],
            *([["Task", self.task]] if self.task else []),
            ["Data", self.data_source],
            ["Data hash", f"`{self.data_hash}`"],
            ["Split sizes", ", ".join(f"{k} {v:,}" for k, v in self.split_sizes.items())],
            ["Started", self.started_at.isoformat(timespec="seconds")],
            ["Finished", self.finished_at.isoformat(timespec="seconds")],
            ["Duration", f"{self.duration_s:.1f} s"],
        ]
        return markdown_table(["", ""], rows)


# ------------------------------------------------------------------ Markdown


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; numbers right-aligned, cells escaped."""
    numeric = [
        bool(rows) and all(_is_number(row[i]) for row in rows if i < len(row))
        for i in range(len(headers))
    ]
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "| " + " | ".join("---:" if n else "---" for n in numeric) + " |",
    ]
    for row in rows:
        cells = [format_value(v) for v in row] + [""] * (len(headers) - len(row))
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def format_value(value: Any) -> str:
    """A number as people read it: ints with separators, small floats with 4 decimals."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.1f}"
        if abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        shown = ", ".join(format_value(v) for v in value[:_MAX_INLINE_ITEMS])
        more = f", … ({len(value)} items)" if len(value) > _MAX_INLINE_ITEMS else ""
        return f"[{shown}{more}]"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    return str(value)


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """Scalars (nested keys dotted) in one table, then one table per mapping of
    mappings (per class, per group...) and per matrix (confusion matrices)."""
    scalars: list[list[Any]] = []
    blocks: list[str] = []
    _collect(metrics, "", scalars, blocks, labels=_labels(metrics))
    parts = [markdown_table(["Metric", "Value"], scalars)] if scalars else []
    return "\n\n".join(parts + blocks) if parts or blocks else "_no metrics_"


def _collect(
    metrics: Mapping[str, Any],
    prefix: str,
    scalars: list[list[Any]],
    blocks: list[str],
    labels: list[str] | None,
) -> None:
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if key in _LABEL_KEYS and _is_vector(value):
            continue  # shown as the headers of the matrix they label
        if isinstance(value, Mapping) and _is_table(value):
            blocks.append(f"**{name}**\n\n{_mapping_table(value)}")
        elif isinstance(value, Mapping):
            _collect(value, f"{name}.", scalars, blocks, _labels(value) or labels)
        elif _is_matrix(value):
            blocks.append(f"**{name}**\n\n{_matrix_table(name, value, labels)}")
        else:
            scalars.append([name, value])


def _mapping_table(table: Mapping[str, Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in table.values():
        columns += [c for c in row if c not in columns]
    rows = [[str(name), *(row.get(c) for c in columns)] for name, row in table.items()]
    return markdown_table(["", *columns], rows)


def _matrix_table(name: str, matrix: Sequence[Sequence[Any]], labels: list[str] | None) -> str:
    n_rows, n_cols = len(matrix), len(matrix[0])
    row_labels = labels if labels and len(labels) == n_rows else [str(i) for i in range(n_rows)]
    col_labels = labels if labels and len(labels) == n_cols else [str(i) for i in range(n_cols)]
    corner = "true \\ predicted" if "confusion" in name else ""
    rows = [[row_labels[i], *matrix[i]] for i in range(n_rows)]
    return markdown_table([corner, *col_labels], rows)


def _labels(metrics: Mapping[str, Any]) -> list[str] | None:
    for key in _LABEL_KEYS:
        value = metrics.get(key)
        if _is_vector(value):
            return [str(v) for v in value]
    return None


def _is_table(value: Mapping[str, Any]) -> bool:
    """A mapping whose values are all mappings of scalars: rows of a table."""
    return bool(value) and all(
        isinstance(row, Mapping) and row and all(_is_scalar(v) for v in row.values())
        for row in value.values()
    )


def _is_matrix(value: Any) -> bool:
    if not isinstance(value, list | tuple) or not value:
        return False
    if not all(isinstance(row, list | tuple) and row for row in value):
        return False
    width = len(value[0])
    return all(len(row) == width and all(_is_number(v) for v in row) for row in value)


def _is_vector(value: Any) -> TypeGuard[Sequence[Any]]:
    return isinstance(value, list | tuple) and all(_is_scalar(v) for v in value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


# ------------------------------------------------------------------ sections


def params_markdown(params: Mapping[str, Any]) -> str:
    rows = [[name, _code(value)] for name, value in sorted(params.items())]
    return markdown_table(["Parameter", "Value"], rows) if rows else "_none_"


def cv_markdown(cv: Mapping[str, Any]) -> str:
    mean: Mapping[str, float] = cv.get("mean", {})
    std: Mapping[str, float] = cv.get("std", {})
    rows = [[name, value, std.get(name)] for name, value in mean.items()]
    kind = "stratified " if cv.get("stratified") else ""
    table = markdown_table(["Metric", "Mean", "Std"], rows)
    return f"{kind}{cv.get('k', len(cv.get('folds', [])))}-fold, held-out fold scores:\n\n{table}"


def tuning_markdown(tuning: Mapping[str, Any]) -> str:
    listed = tuning.get("trials")
    trials: list[Mapping[str, Any]] = listed if isinstance(listed, list) else []
    states = {s: sum(t.get("state") == s for t in trials) for s in ("complete", "pruned", "failed")}
    summary = markdown_table(
        ["", ""],
        [
            ["Metric", f"{tuning.get('metric')} ({tuning.get('direction')})"],
            ["Best value", tuning.get("best_value")],
            ["Best parameters", _code(tuning.get("best_params", {}))],
            ["Trials", ", ".join(f"{n} {s}" for s, n in states.items() if n) or listed],
        ],
    )
    if not trials:
        return summary
    rows = [
        [t.get("number"), t.get("state"), t.get("value"), t.get("epochs"), _code(t.get("params"))]
        for t in trials
    ]
    table = markdown_table(["Trial", "State", "Value", "Epochs", "Parameters"], rows)
    return f"{summary}\n\n{table}"


def compression_markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in reports:
        rows.append(
            [
                r.get("method"),
                f"{format_value(r.get('metric_before'))} → {format_value(r.get('metric_after'))}",
                f"{format_value(r.get('latency_ms_before'))} → "
                f"{format_value(r.get('latency_ms_after'))}",
                f"{_kib(r.get('size_bytes_before'))} → {_kib(r.get('size_bytes_after'))}",
                f"{_kib(r.get('zipped_bytes_before'))} → {_kib(r.get('zipped_bytes_after'))}",
                r.get("sparsity"),
                "yes" if r.get("kept") else "no",
            ]
        )
    metric = reports[0].get("metric", "metric") if reports else "metric"
    return markdown_table(
        ["Method", metric, "Latency ms/batch", "Size", "Zipped", "Sparsity", "Kept"], rows
    )


def onnx_markdown(onnx: Mapping[str, Any]) -> str:
    rows: list[list[Any]] = [
        ["File", f"`{onnx.get('path')}`"],
        ["Exporter", f"{onnx.get('exporter')}, opset {onnx.get('opset')}"],
        ["Inputs", ", ".join(onnx.get("input_names", []))],
        ["Outputs", ", ".join(onnx.get("output_names", []))],
        ["Max abs difference vs torch", onnx.get("max_abs_diff")],
        ["Tolerance", onnx.get("tolerance")],
        ["Batch sizes checked", ", ".join(str(b) for b in onnx.get("batch_sizes", []))],
        ["Size", _kib(onnx.get("size_bytes"))],
        *[["Note", note] for note in onnx.get("notes", [])],
    ]
    return markdown_table(["", ""], rows)


def _kib(size: Any) -> str:
    return f"{size / 1024:,.1f} KiB" if _is_number(size) else "—"


def _code(value: Any) -> str:
    return f"`{json.dumps(value, default=str)}`"
