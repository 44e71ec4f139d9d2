"""Classification metrics as pure functions over numpy arrays, shared by the
classifier recipes so every report has the same keys and the same meaning.

``y_true`` and ``y_pred`` hold class indices (0..k-1); ``proba`` is (rows, k) with
rows summing to 1. Every function returns plain Python numbers, lists and dicts,
ready for JSON. A metric that is undefined on the given rows (ROC-AUC when only
one class is present) is None rather than a made-up number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn import metrics as skm

from modelmint.training.recipe import DataError

__all__ = [
    "accuracy",
    "calibration",
    "classification_report",
    "confusion_matrix",
    "per_class_scores",
    "per_group",
    "roc_auc",
]

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def accuracy(y_true: IntArray, y_pred: IntArray) -> float:
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def roc_auc(y_true: IntArray, proba: FloatArray) -> float | None:
    """Binary: AUC of the second class's probability. Multiclass: the unweighted mean of
    one-vs-rest AUCs over the classes present (a class absent from ``y_true`` has no
    AUC). None when fewer than two classes are present."""
    present = np.unique(y_true)
    if len(present) < 2:
        return None
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y_true, proba[:, 1]))
    scores = [float(skm.roc_auc_score(y_true == c, proba[:, c])) for c in present]
    return float(np.mean(scores))


def per_class_scores(
    y_true: IntArray, y_pred: IntArray, labels: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1 and support of each class (0.0 where undefined)."""
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(len(labels))), zero_division=0.0
    )
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def confusion_matrix(y_true: IntArray, y_pred: IntArray, classes: int) -> list[list[int]]:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return [[int(x) for x in row] for row in matrix]


def calibration(y_true: IntArray, proba: FloatArray, bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of the top-label confidence, and the reliability bins.

    The confidence of a row is its highest probability; a row is right when that class
    is the true one. Bins split [0, 1] evenly; ECE is the row-weighted mean gap between
    a bin's mean confidence and its accuracy. Empty bins are listed with count 0.
    """
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidence in (edges[i], edges[i+1]]; 0 goes to the first bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    table = []
    for i in range(bins):
        mask = which == i
        count = int(mask.sum())
        mean_confidence = float(confidence[mask].mean()) if count else None
        mean_accuracy = float(correct[mask].mean()) if count else None
        if mean_confidence is not None and mean_accuracy is not None:
            ece += count / len(y_true) * abs(mean_confidence - mean_accuracy)
        table.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": count,
                "confidence": mean_confidence,
                "accuracy": mean_accuracy,
            }
        )
    return {"ece": float(ece), "bins": table}


def _summary(y_true: IntArray, proba: FloatArray, labels: Sequence[str]) -> dict[str, Any]:
    y_pred = proba.argmax(axis=1).astype(np.int64)
    classes = per_class_scores(y_true, y_pred, labels)
    return {
        "rows": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "roc_auc": roc_auc(y_true, proba),
        "precision_macro": float(np.mean([c["precision"] for c in classes.values()])),
        "recall_macro": float(np.mean([c["recall"] for c in classes.values()])),
        "f1_macro": float(np.mean([c["f1"] for c in classes.values()])),
        "per_class": classes,
    }


def per_group(
    y_true: IntArray, proba: FloatArray, groups: Sequence[object], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The summary metrics computed separately for the rows of each group, to show
    whether the model serves some groups worse than others."""
    keys = np.asarray([str(g) for g in groups], dtype=object)
    return {
        str(group): _summary(y_true[keys == group], proba[keys == group], labels)
        for group in sorted(set(keys.tolist()))
    }


def classification_report(
    y_true: IntArray,
    proba: FloatArray,
    labels: Sequence[str],
    groups: Sequence[object] | None = None,
) -> dict[str, Any]:
    """Everything above in one report, keyed as the recipes' ``evaluate`` returns it."""
    if len(y_true) == 0:
        raise DataError("cannot evaluate a classifier on zero rows")
    y_pred = proba.argmax(axis=1).astype(np.int64)
    report = _summary(y_true, proba, labels)
    report["confusion_matrix"] = {
        "labels": list(labels),
        "matrix": confusion_matrix(y_true, y_pred, len(labels)),
    }
    report["calibration"] = calibration(y_true, proba)
    if groups is not None:
        report["per_group"] = per_group(y_true, proba, groups, labels)
    return report
