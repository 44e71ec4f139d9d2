"""Run reports: a JSON round trip, and Markdown whose tables carry the numbers."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

from modelmint.training.compression import prune_magnitude
from modelmint.training.evaluation import cross_validate
from modelmint.training.onnx_export import OnnxReport
from modelmint.training.reports import (
    RunReport,
    format_value,
    library_versions,
    markdown_table,
    metrics_markdown,
)
from modelmint.training.tuning import TrialRecord, TuneResult
from tests.unit.training.test_evaluation import LogisticRecipe, Table, breast_cancer

STARTED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny networks on a shared 2-core machine: a second torch thread only contends.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run() -> tuple[LogisticRecipe, Table, dict[str, Any]]:
    """A real small run: fit, test metrics, 3-fold CV on the training rows."""
    recipe = LogisticRecipe(hidden=8, epochs=20, seed=0)
    parts = recipe.split(breast_cancer())
    recipe.fit(parts.train, parts.val)
    cv = cross_validate(LogisticRecipe(hidden=8, epochs=20, seed=0), parts.train, k=3)
    return recipe, parts.test, {"cv": cv, "split": parts}


def _report(run: tuple[LogisticRecipe, Table, dict[str, Any]]) -> RunReport:
    recipe, test, extra = run
    tuning = TuneResult(
        metric="accuracy",
        direction="maximize",
        best_params={"lr": 0.31},
        best_value=0.97,
        trials=[
            TrialRecord(0, {"lr": 0.31}, "complete", 0.97, 20),
            TrialRecord(1, {"lr": 1e-5}, "pruned", 0.41, 2),
        ],
    )
    onnx = OnnxReport(
        path=Path("/tmp/model.onnx"),
        opset=20,
        exporter="dynamo",
        input_names=["input"],
        output_names=["output"],
        max_abs_diff=5.9e-8,
        tolerance=1e-4,
        batch_sizes=[32, 48],
        size_bytes=2048,
    )
    pruned = prune_magnitude(copy.deepcopy(recipe), test, 0.5, repeats=3)
    split = extra["split"]
    return RunReport(
        recipe=recipe.name,
        task=recipe.task,
        params=recipe.get_params(),
        data_source="sklearn:breast_cancer",
        data_hash="sha256:" + "ab" * 32,
        split_sizes={"train": len(split.train.y), "val": len(split.val.y), "test": len(test.y)},
        metrics=recipe.evaluate(test),
        started_at=STARTED,
        finished_at=STARTED + timedelta(seconds=42.5),
        cv=extra["cv"],
        tuning=tuning.to_dict(),
        compression=[pruned.to_dict()],
        onnx=onnx.to_dict(),
        timings={"load": 0.2, "fit": 1.25},
    )


def _tables(markdown: str) -> list[list[str]]:
    """Each Markdown table as its lines."""
    tables: list[list[str]] = []
    current: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


# ------------------------------------------------------------------ JSON


def test_json_round_trip_gives_the_same_report(run: Any) -> None:
    report = _report(run)
    text = report.to_json()
    data = json.loads(text)
    assert data["started_at"] == "2026-03-01T12:00:00+00:00"
    assert data["cv"]["k"] == 3
    assert data["compression"][0]["method"] == "prune-global"
    assert data["onnx"]["path"] == "/tmp/model.onnx"
    assert RunReport.from_json(text) == report


def test_from_dict_ignores_unknown_keys(run: Any) -> None:
    data = _report(run).to_dict()
    data["added_by_a_later_version"] = 1
    assert RunReport.from_dict(data).recipe == "test-logistic"


def test_versions_name_the_installed_libraries() -> None:
    versions = library_versions()
    assert versions["torch"] == metadata.version("torch")
    assert versions["scikit-learn"] == metadata.version("scikit-learn")
    assert versions["modelmint"] == metadata.version("modelmint")
    assert re.fullmatch(r"3\.\d+\.\d+", versions["python"])


def test_duration_is_measured_between_the_timestamps(run: Any) -> None:
    assert _report(run).duration_s == 42.5


# ------------------------------------------------------------------ Markdown


def test_markdown_lists_run_facts_metrics_and_every_stage(run: Any) -> None:
    report = _report(run)
    text = report.to_markdown()
    for heading in (
        "# Training run: test-logistic",
        "## Metrics (test split)",
        "## Cross-validation (3 folds)",
        "## Tuning",
        "## Compression",
        "## ONNX export",
        "## Parameters",
        "## Timings",
        "## Versions",
    ):
        assert heading in text
    assert f"`{report.data_hash}`" in text
    sizes = report.split_sizes
    assert f"train {sizes['train']}, val {sizes['val']}, test {sizes['test']}" in text
    accuracy = format_value(report.metrics["accuracy"])
    assert f"| accuracy | {accuracy} |" in text
    cv_mean = format_value(report.cv["mean"]["accuracy"]) if report.cv else ""
    cv_std = format_value(report.cv["std"]["accuracy"]) if report.cv else ""
    assert f"| accuracy | {cv_mean} | {cv_std} |" in text
    assert '| 1 | pruned | 0.4100 | 2 | `{"lr": 1e-05}` |' in text
    assert "| total | 42.50 |" in text
    assert "5.90e-08" in text  # the ONNX parity difference


def test_every_table_is_well_formed(run: Any) -> None:
    for table in _tables(_report(run).to_markdown()):
        widths = {len(_cells(line)) for line in table}
        assert len(widths) == 1, table
        assert re.fullmatch(r"\|( ---:? \|)+", table[1]), table[1]


def test_per_class_metrics_and_confusion_matrix_are_tables(run: Any) -> None:
    recipe, test, _ = run
    metrics = recipe.evaluate(test)
    text = metrics_markdown(metrics)
    matrix = metrics["confusion_matrix"]
    assert "| true \\ predicted | malignant | benign |" in text
    assert f"| malignant | {matrix[0][0]} | {matrix[0][1]} |" in text
    assert f"| benign | {matrix[1][0]} | {matrix[1][1]} |" in text
    assert "|  | precision | recall | support |" in text
    per_class = metrics["per_class"]["0"]
    row = f"| 0 | {format_value(per_class['precision'])} | {format_value(per_class['recall'])}"
    assert row in text
    # The labels list names the matrix; it is not a metric row of its own.
    assert "| labels |" not in text


def test_nested_scalars_are_dotted_and_long_lists_cut() -> None:
    text = metrics_markdown(
        {
            "baseline": {"accuracy": 0.91, "model": "gradient-boosting"},
            "calibration": {"bins": list(range(30))},
            "rmse": 0.8123456,
        }
    )
    assert "| baseline.accuracy | 0.9100 |" in text
    assert "| baseline.model | gradient-boosting |" in text
    assert "| calibration.bins | [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, … (30 items)] |" in text
    assert "| rmse | 0.8123 |" in text


def test_a_matrix_without_labels_is_numbered() -> None:
    text = metrics_markdown({"confusion_matrix": [[5, 1, 0], [0, 7, 2], [1, 0, 9]]})
    assert "| true \\ predicted | 0 | 1 | 2 |" in text
    assert "| 2 | 1 | 0 | 9 |" in text


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1234567, "1,234,567"),
        (0.98765, "0.9877"),
        (12345.678, "12,345.7"),
        (0.000123, "1.23e-04"),
        (0.0, "0"),
        (None, "—"),
        (True, "true"),
        (float("nan"), "nan"),
        ("text", "text"),
    ],
)
def test_format_value(value: Any, shown: str) -> None:
    assert format_value(value) == shown


def test_markdown_table_escapes_pipes_and_right_aligns_numbers() -> None:
    table = markdown_table(["name", "value"], [["a|b", 1], ["c", 2.5]])
    assert table.splitlines() == [
        "| name | value |",
        "| --- | ---: |",
        "| a\\|b | 1 |",
        "| c | 2.5000 |",
    ]


def test_an_empty_report_still_renders() -> None:
    report = RunReport.empty("test-logistic")
    text = report.to_markdown()
    assert "# Training run: test-logistic" in text
    assert "_no metrics_" in text
    assert RunReport.from_json(report.to_json()) == report


def test_onnx_notes_are_listed(run: Any) -> None:
    report = _report(run)
    assert report.onnx is not None
    report.onnx = {**report.onnx, "exporter": "torchscript", "notes": ["traced | instead"]}
    text = report.to_markdown()
    assert "| Exporter | torchscript, opset 20 |" in text
    assert "| Note | traced \\| instead |" in text


def test_a_tuning_summary_without_trial_rows_renders(run: Any) -> None:
    report = _report(run)
    report.tuning = {"best_params": {"lr": 0.1}, "best_value": 0.9, "trials": 5}
    text = report.to_markdown()
    assert '`{"lr": 0.1}`' in text
    assert "| Trials | 5 |" in text
