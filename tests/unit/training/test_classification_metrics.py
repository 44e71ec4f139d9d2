"""Classification metrics checked against hand-computed values and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from modelmint.training.classification_metrics import (
    accuracy,
    calibration,
    classification_report,
    confusion_matrix,
    per_class_scores,
    per_group,
    roc_auc,
)
from modelmint.training.recipe import DataError


def test_accuracy_and_confusion_matrix_by_hand() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])

    assert accuracy(y_true, y_pred) == pytest.approx(3 / 5)
    assert confusion_matrix(y_true, y_pred, 3) == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_binary_roc_auc_uses_the_second_class_probability() -> None:
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    proba = np.stack([1 - p1, p1], axis=1)

    assert roc_auc(y, proba) == pytest.approx(0.75)


def test_multiclass_roc_auc_is_macro_one_vs_rest() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    proba = rng.dirichlet([1, 1, 1], size=60)
    proba[np.arange(60), y] += 0.3
    proba /= proba.sum(axis=1, keepdims=True)

    expected = roc_auc_score(y, proba, multi_class="ovr", average="macro")
    assert roc_auc(y, proba) == pytest.approx(expected)


def test_roc_auc_is_none_when_one_class_is_present() -> None:
    assert roc_auc(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]])) is None


def test_per_class_scores_match_f1_and_report_support() -> None:
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 0])

    scores = per_class_scores(y_true, y_pred, ["a", "b", "c"])

    assert scores["a"]["precision"] == pytest.approx(1 / 3)
    assert scores["b"]["recall"] == pytest.approx(2 / 3)
    assert scores["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    macro = np.mean([s["f1"] for s in scores.values()])
    assert macro == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_calibration_of_a_perfectly_calibrated_and_an_overconfident_model() -> None:
    # Confidence 0.75 and right 3 times in 4: calibrated.
    y = np.array([0, 0, 0, 1])
    proba = np.tile([0.75, 0.25], (4, 1))
    calibrated = calibration(y, proba, bins=10)
    assert calibrated["ece"] == pytest.approx(0.0)
    filled = [b for b in calibrated["bins"] if b["count"]]
    assert len(filled) == 1 and filled[0]["lower"] == pytest.approx(0.7)
    assert filled[0]["accuracy"] == pytest.approx(0.75)

    # Confidence 0.95, right half the time: ECE 0.45.
    overconfident = calibration(np.array([0, 1]), np.tile([0.95, 0.05], (2, 1)))
    assert overconfident["ece"] == pytest.approx(0.45)
    assert sum(b["count"] for b in overconfident["bins"]) == 2


def test_per_group_metrics_slice_rows_by_group() -> None:
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])

    groups = per_group(y, proba, ["x", "x", "y", "y"], ["neg", "pos"])

    assert groups["x"]["accuracy"] == 1.0 and groups["x"]["rows"] == 2
    assert groups["y"]["accuracy"] == 0.0
    assert groups["y"]["roc_auc"] == 0.0


def test_report_is_json_serialisable_and_refuses_zero_rows() -> None:
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.45, 0.55]])

    report = classification_report(y, proba, ["n", "p"], groups=["a", "a", "b", "b"])

    assert json.loads(json.dumps(report)) == report
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["confusion_matrix"] == {"labels": ["n", "p"], "matrix": [[1, 1], [0, 2]]}
    assert set(report["per_group"]) == {"a", "b"}
    with pytest.raises(DataError):
        classification_report(np.array([], dtype=np.int64), np.zeros((0, 2)), ["n", "p"])
