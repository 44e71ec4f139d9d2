"""K-fold cross-validation of any recipe, and the flattening of metric reports.

``cross_validate`` needs nothing from a recipe beyond the generic shape: ``rows``,
``subset`` and ``labels`` to cut the folds (stratified when the recipe has labels),
``get_params`` to train a fresh copy per fold, ``fit`` and ``evaluate``. Each fold
trains on the other k-1 parts without validation data, so nothing learnt about the
held-out part leaks in through early stopping or model selection.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, TypeVar

import numpy as np

from modelmint.training.recipe import DataError, Progress, Recipe, silent

__all__ = ["CrossValidation", "cross_validate", "flatten_metrics", "fold_indices"]

D = TypeVar("D")


class CrossValidation(TypedDict):
    """What ``cross_validate`` returns: every fold's report, then the mean and the
    standard deviation (population, as scikit-learn reports it) of each numeric metric."""

    k: int
    stratified: bool
    folds: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]


def flatten_metrics(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a (nested) metrics report, nested keys joined with dots.

    Lists (confusion matrices, curves), strings and booleans are left out: they have
    no meaningful mean across folds or trials.
    """
    flat: dict[str, float] = {}
    for key, value in report.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def fold_indices(
    n: int, k: int, *, seed: int, labels: Sequence[object] | None = None
) -> list[tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.int64]]]]:
    """(train, held-out) index arrays of ``k`` shuffled folds, the same for the same seed.

    With ``labels`` every class keeps its share in every fold, which is only possible
    when each class has at least ``k`` examples.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds; got {k}")
    if k > n:
        raise DataError(f"cannot cut {n} rows into {k} folds")
    placeholder = np.zeros(n)
    if labels is None:
        splits = KFold(n_splits=k, shuffle=True, random_state=seed).split(placeholder)
    else:
        names = np.asarray([str(label) for label in labels])
        values, counts = np.unique(names, return_counts=True)
        rare = [
            f"{str(value)!r} ({count})"
            for value, count in zip(values, counts, strict=True)
            if count < k
        ]
        if rare:
            raise DataError(
                f"stratified {k}-fold cross-validation needs at least {k} examples of each "
                f"class; too few rows of: {', '.join(rare)}"
            )
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(
            placeholder, names
        )
    return [(train.astype(np.int64), test.astype(np.int64)) for train, test in splits]


def cross_validate(
    recipe: Recipe[D], data: D, k: int = 5, progress: Progress = silent
) -> CrossValidation:
    """Train a fresh copy of ``recipe`` (same hyperparameters) on each k-1 folds and
    evaluate it on the fold left out.

    ``progress`` receives the copies' own reports unchanged (``"epoch"``...) and one
    ``("cv", fold, k, metrics)`` report after each fold with that fold's numeric metrics.
    """
    labels = recipe.labels(data)
    folds = fold_indices(
        recipe.rows(data),
        k,
        seed=int(getattr(recipe, "seed", 0)),
        labels=labels,
    )
    reports: list[dict[str, Any]] = []
    for number, (train, held_out) in enumerate(folds, start=1):
        fold_recipe = type(recipe)(**recipe.get_params())
        fold_recipe.fit(recipe.subset(data, train), progress=progress)
        report = fold_recipe.evaluate(recipe.subset(data, held_out))
        reports.append(report)
        progress("cv", number, k, flatten_metrics(report))
    mean, std = _aggregate([flatten_metrics(r) for r in reports])
    return {
        "k": k,
        "stratified": labels is not None,
        "folds": reports,
        "mean": mean,
        "std": std,
    }


def _aggregate(flat_reports: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population standard deviation per metric, over the folds where the
    metric is finite (a fold may lack a metric, e.g. ROC-AUC with one class present)."""
    names = sorted({name for report in flat_reports for name in report})
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for name in names:
        values = [r[name] for r in flat_reports if name in r and math.isfinite(r[name])]
        if values:
            mean[name] = float(np.mean(values))
            std[name] = float(np.std(values))
    return mean, std
