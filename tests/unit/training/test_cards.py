"""Model cards from run reports: the sections a card promises, filled from real
metrics of a scikit-learn model on the breast-cancer data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from modelmint.training.cards import FeedbackSummary, ScorePoint, model_card
from modelmint.training.reports import RunReport, format_value


@pytest.fixture(scope="module")
def metrics() -> dict[str, Any]:
    """Real test metrics of a small random forest: per class, per group (tumour size
    above or below the median, the kind of column --group names) and importances."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, classification_report, roc_auc_score
    from sklearn.model_selection import train_test_split

    bunch = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data, bunch.target, test_size=0.3, random_state=0, stratify=bunch.target
    )
    forest = RandomForestClassifier(n_estimators=25, random_state=0).fit(x_train, y_train)
    predicted = forest.predict(x_test)
    report = classification_report(
        y_test, predicted, target_names=list(bunch.target_names), output_dict=True
    )
    large = x_test[:, 0] > np.median(x_test[:, 0])
    per_group = {
        "size": {
            name: {
                "accuracy": float(accuracy_score(y_test[mask], predicted[mask])),
                "rows": int(mask.sum()),
            }
            for name, mask in (("large", large), ("small", ~large))
        }
    }
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "roc_auc": float(roc_auc_score(y_test, forest.predict_proba(x_test)[:, 1])),
        "per_class": {name: report[name] for name in bunch.target_names},
        "per_group": per_group,
        "feature_importances": dict(
            zip(bunch.feature_names, map(float, forest.feature_importances_), strict=True)
        ),
    }


def _report(metrics: dict[str, Any], **changes: Any) -> RunReport:
    report = RunReport(
        recipe="tabular-classifier",
        task="classification",
        params={"hidden": [64, 32], "lr": 0.001, "seed": 0},
        data_source="data/cancer.csv",
        data_hash="sha256:" + "cd" * 32,
        split_sizes={"train": 398, "val": 0, "test": 171},
        metrics=metrics,
        started_at=datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
        finished_at=datetime(2026, 3, 1, 9, 5, tzinfo=UTC),
    )
    for key, value in changes.items():
        setattr(report, key, value)
    return report


def _card(report: RunReport, **kwargs: Any) -> str:
    return model_card(
        report,
        name="cancer-risk",
        version=3,
        intended_use="Flag biopsies for a second review by a pathologist.",
        limitations=["Trained on one hospital's data.", "Not a diagnosis."],
        **kwargs,
    )


def test_card_has_the_promised_sections_in_order(metrics: dict[str, Any]) -> None:
    card = _card(_report(metrics))
    headings = [line for line in card.splitlines() if line.startswith("#")]
    assert headings == [
        "# cancer-risk v3",
        "## Intended use",
        "## Limitations",
        "## Training data",
        "## Evaluation",
        "## Per-class metrics",
        "## Per-group metrics",
        "## Feature importances",
        "## Training parameters",
    ]
    assert "Flag biopsies for a second review by a pathologist." in card
    assert "- Trained on one hospital's data.\n- Not a diagnosis." in card
    assert "`tabular-classifier` recipe (classification) on 2026-03-01" in card


def test_data_section_names_source_hash_and_sizes(metrics: dict[str, Any]) -> None:
    card = _card(_report(metrics))
    assert "| Source | data/cancer.csv |" in card
    assert f"| Hash | `sha256:{'cd' * 32}` |" in card
    assert "| train rows | 398 |" in card
    assert "| test rows | 171 |" in card


def test_evaluation_shows_scalars_but_not_the_sectioned_metrics(metrics: dict[str, Any]) -> None:
    card = _card(_report(metrics))
    evaluation = card.split("## Evaluation")[1].split("## Per-class")[0]
    assert f"| accuracy | {format_value(metrics['accuracy'])} |" in evaluation
    assert f"| roc_auc | {format_value(metrics['roc_auc'])} |" in evaluation
    assert "per_class" not in evaluation
    assert "feature_importances" not in evaluation


def test_per_class_and_per_group_tables_carry_the_numbers(metrics: dict[str, Any]) -> None:
    card = _card(_report(metrics))
    malignant = metrics["per_class"]["malignant"]
    assert "| Class | precision | recall | f1-score | support |" in card
    assert (
        f"| malignant | {format_value(malignant['precision'])} | "
        f"{format_value(malignant['recall'])} | {format_value(malignant['f1-score'])} |"
    ) in card
    large = metrics["per_group"]["size"]["large"]
    assert "**size**" in card
    assert f"| large | {format_value(large['accuracy'])} | {large['rows']} |" in card


def test_per_group_metrics_without_a_column_level_make_one_table(
    metrics: dict[str, Any],
) -> None:
    flat = {**metrics, "per_group": metrics["per_group"]["size"]}
    card = _card(_report(flat))
    assert "**size**" not in card
    assert "| Group | accuracy | rows |" in card


def test_feature_importances_are_ranked_and_cut(metrics: dict[str, Any]) -> None:
    card = _card(_report(metrics))
    section = card.split("## Feature importances")[1].split("##")[0]
    importances = metrics["feature_importances"]
    ranked = sorted(importances, key=lambda name: -importances[name])
    rows = [line for line in section.splitlines() if line.startswith("| ") and "█" in line]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == ranked[:20]
    assert rows[0].count("█") == 20  # the strongest feature has the full bar
    assert f"…and {len(importances) - 20} more features." in section


def test_sections_found_at_depth_name_where_they_came_from() -> None:
    metrics = {"accuracy": 0.9, "baseline": {"feature_importances": {"age": 0.7, "income": 0.3}}}
    card = _card(_report(metrics))
    assert "## Feature importances (baseline)" in card
    assert "| age | 0.7000 |" in card
    assert "## Per-class metrics" not in card


def test_tuning_compression_and_onnx_facts_appear(metrics: dict[str, Any]) -> None:
    report = _report(
        metrics,
        tuning={
            "metric": "accuracy",
            "best_value": 0.97,
            "best_params": {"lr": 0.01},
            "trials": [{"state": "complete"}, {"state": "pruned"}, {"state": "pruned"}],
        },
        compression=[
            {
                "method": "dynamic-int8",
                "metric": "accuracy",
                "metric_before": 0.97,
                "metric_after": 0.96,
                "latency_ms_before": 0.5,
                "latency_ms_after": 0.25,
                "batch_size": 32,
                "size_bytes_before": 36061,
                "size_bytes_after": 12813,
                "sparsity": None,
                "kept": True,
            }
        ],
        onnx={
            "opset": 20,
            "exporter": "dynamo",
            "max_abs_diff": 5.9e-8,
            "tolerance": 1e-4,
            "batch_sizes": [32, 48],
            "notes": ["traced instead"],
        },
    )
    card = _card(report)
    assert "Tuned with 3 Optuna trials (2 pruned early): best accuracy 0.9700" in card
    assert "## Compression and export" in card
    assert (
        "- dynamic-int8: accuracy 0.9700 → 0.9600, latency 0.5000 → 0.2500 ms per batch of 32, "
        "state dict 36,061 → 12,813 bytes (this version is the compressed one)."
    ) in card
    assert "max absolute difference from torch 5.90e-08 on batches of 32, 48" in card
    assert "  - Note: traced instead" in card


def test_cross_validation_is_shown_as_mean_plus_minus_std(metrics: dict[str, Any]) -> None:
    card = _card(
        _report(metrics, cv={"k": 5, "mean": {"accuracy": 0.955}, "std": {"accuracy": 0.012}})
    )
    assert "5-fold cross-validation (mean ± std):" in card
    assert "| accuracy | 0.9550 ± 0.0120 |" in card


def test_feedback_section_only_when_given(metrics: dict[str, Any]) -> None:
    report = _report(metrics)
    assert "## Feedback" not in _card(report)
    feedback = FeedbackSummary(
        volume=1250,
        mean_score=4.21,
        scale="1-5",
        trend=[ScorePoint("2026-W10", 4.0, 600), ScorePoint("2026-W11", 4.4, 650)],
        corrections=[("benign", 31), ("malignant", 7)],
    )
    card = _card(report, feedback=feedback)
    section = card.split("## Feedback")[1]
    assert "1,250 ratings, mean score 4.2100 on a 1-5 scale." in section
    assert "| 2026-W11 | 4.4000 | 650 |" in section
    assert "| benign | 31 |" in section


def test_a_card_for_a_bare_report_still_reads(metrics: dict[str, Any]) -> None:
    card = model_card(
        RunReport.empty("recommender"),
        name="recs",
        version="7",
        intended_use="Suggest items.",
        limitations="Cold-start users get popular items.",
    )
    assert card.startswith("# recs v7\n")
    assert "Cold-start users get popular items." in card
    assert "_no metrics_" in card


def test_importances_given_as_rows_with_spread_are_ranked_in_the_card() -> None:
    rows = [
        {"feature": "income", "mean": 0.02, "std": 0.01},
        {"feature": "age", "mean": 0.15, "std": 0.02},
    ]
    card = model_card(
        _report({"feature_importances": rows}),
        name="risk",
        version=1,
        intended_use="scoring",
        limitations="",
    )
    section = card.split("## Feature importances", 1)[1]
    assert section.index("age") < section.index("income")
