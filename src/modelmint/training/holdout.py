"""Registered classifier versions measured on one shared set of held-out rows.

A version's registered metrics come from the test split of its own training data: a
version trained on 40 feedback rows was tested on 8 of them, its predecessor on 114
rows of the original data, and the two numbers do not compare. Here every version
answers the same rows:

    held-out rows: the baseline's test split, replayed from its lineage (the data it
                   was trained on, its recipe, seed and split fractions), or a labelled
                   file the caller names
    - rows any compared version learned from (its training and validation parts and
      the rows it added with --add-data), matched on the input a client would send
    -> each version's exported model answers the rest
    -> accuracy with a 95% interval, macro F1 and ROC-AUC, per version

Intervals here and in the feedback comparison come from ``interval95``: the normal
approximation of a mean, clipped to the range the measure can take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelmint.errors import ModelMintError
from modelmint.storage.tables import ModelVersion
from modelmint.training.catalog import recipe_class
from modelmint.training.recipe import DataError, Recipe, Splits
from modelmint.training.splits import input_key, source_hash

__all__ = ["HeldOut", "VersionScores", "interval95", "measure_on_held_out"]

# z of a two-sided 95% interval.
_Z95 = 1.96
# Predictions are asked for in batches of this many rows, as the gateway batches them.
_BATCH = 512

DataResolver = Callable[[str], str]


def interval95(
    values: Sequence[float], bounds: tuple[float, float] | None = None
) -> tuple[float | None, float | None, float | None]:
    """Mean and 95% interval (``mean +- 1.96 * sd / sqrt(n)``) of ``values``, the interval
    clipped to ``bounds`` (the measure's range: a share cannot leave [0, 1]). No mean
    without values, no interval from fewer than two."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = _Z95 * math.sqrt(variance / n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


@dataclass(frozen=True, slots=True)
class VersionScores:
    version: int
    accuracy: float
    accuracy_low: float | None  # 95% interval, within [0, 1]
    accuracy_high: float | None
    f1_macro: float
    roc_auc: float | None  # None when the rows hold a single class


@dataclass(frozen=True, slots=True)
class HeldOut:
    source: str  # where the rows came from, in words
    rows: int  # rows every version answered
    left_out: int  # held-out rows dropped because a compared version learned from them
    # Versions whose training data could not be read again: what they learned is unknown.
    unchecked: tuple[int, ...]
    scores: tuple[VersionScores, ...]


def measure_on_held_out(
    versions: Sequence[ModelVersion],
    *,
    resolve_data: DataResolver,
    eval_data: str | None = None,
) -> HeldOut:
    """Score ``versions`` (the first is the baseline) on the same held-out rows: the
    baseline's test split, or every row of ``eval_data``. Raises DataError when the
    versions are not classifiers trained here or the rows cannot be had."""
    if not versions:
        raise DataError("no versions to measure")
    baseline = versions[0]
    for version in versions:
        _recipe(version)  # each must be a classifier recipe's, before any work
    if eval_data is not None:
        recipe = _recipe(baseline)
        rows = recipe.labelled_inputs(recipe.load_rows(resolve_data(eval_data)))
        source = f"every row of {eval_data}"
    else:
        recipe, splits = _replay(baseline, resolve_data)
        rows = recipe.labelled_inputs(splits.test)
        source = f"the test split of v{baseline.version}'s data ({baseline.lineage['data']})"
    learned: set[bytes] = set()
    unchecked: list[int] = []
    for version in versions:
        try:
            learned |= _learned(version, resolve_data)
        except (ModelMintError, OSError):
            unchecked.append(version.version)
    kept = [(x, label) for x, label in rows if input_key(x) not in learned]
    if not kept:
        raise DataError(
            f"each of the {len(rows)} held-out rows ({source}) was learned by a compared "
            "version; name other labelled rows with --eval-data"
        )
    scores = tuple(_scores(version, kept) for version in versions)
    return HeldOut(source, len(kept), len(rows) - len(kept), tuple(unchecked), scores)


def _recipe(version: ModelVersion) -> Recipe[Any]:
    if version.recipe is None or "data" not in (version.lineage or {}):
        raise DataError(
            f"v{version.version} was not trained by modelmint train: it has no recipe or data "
            "to measure it with"
        )
    cls = recipe_class(version.recipe)
    if cls.task != "classification":
        raise DataError(
            f"held-out comparison measures classifiers; v{version.version} is a {cls.task} model"
        )
    try:
        recipe: Recipe[Any] = cls(**(version.params or {}))
    except TypeError as exc:  # parameters of an older release of the recipe
        raise DataError(f"v{version.version}'s parameters no longer fit {cls.name}: {exc}") from exc
    return recipe


def _replay(version: ModelVersion, resolve_data: DataResolver) -> tuple[Recipe[Any], Splits[Any]]:
    """The recipe and the train/validation/test split ``version`` was trained with,
    refused when its data changed since (the split would be another)."""
    recipe = _recipe(version)
    lineage = version.lineage
    source = resolve_data(str(lineage["data"]))
    added = [resolve_data(str(s)) for s in lineage.get("added_data", [])]
    if version.data_hash is not None and source_hash([source, *added]) != version.data_hash:
        raise DataError(
            f"the data v{version.version} was trained on ({lineage['data']}) changed since; "
            "name labelled rows with --eval-data"
        )
    return recipe, recipe.split(recipe.load_data(source))


def _learned(version: ModelVersion, resolve_data: DataResolver) -> set[bytes]:
    """The inputs ``version`` learned from: its training and validation parts, and the
    added rows it kept (those repeating a validation or test input were left out)."""
    recipe, splits = _replay(version, resolve_data)
    held = {input_key(x) for x, _ in recipe.labelled_inputs(splits.test)}
    seen = {
        input_key(x) for part in (splits.train, splits.val) for x, _ in recipe.labelled_inputs(part)
    }
    for extra in version.lineage.get("added_data", []):
        more = recipe.load_rows(resolve_data(str(extra)))
        keys = {input_key(x) for x, _ in recipe.labelled_inputs(more)}
        seen |= keys - held
    return seen


def _scores(version: ModelVersion, rows: list[tuple[Any, str]]) -> VersionScores:
    # Imported here: torch loads only when a comparison measures versions.
    import numpy as np
    from sklearn.metrics import f1_score

    from modelmint.serving.artifacts import resolve_artifact
    from modelmint.serving.predictors import load_predictor
    from modelmint.training.classification_metrics import roc_auc
    from modelmint.training.tables import sort_labels

    path = resolve_artifact(version.artifact_uri)
    predictor = load_predictor(path if path.is_dir() else path.parent)
    try:
        inputs = [predictor.validate(x) for x, _ in rows]
    except ModelMintError as exc:
        raise DataError(f"v{version.version} cannot answer the held-out rows: {exc}") from exc
    results: list[dict[str, Any]] = []
    for start in range(0, len(inputs), _BATCH):
        results += predictor.predict(inputs[start : start + _BATCH])
    truth = [label for _, label in rows]
    predicted = [str(r["label"]) for r in results]
    accuracy, low, high = interval95(
        [1.0 if p == t else 0.0 for p, t in zip(predicted, truth, strict=True)], (0.0, 1.0)
    )
    labels = sort_labels(set(truth) | {str(k) for r in results for k in r.get("scores", {})})
    index = {label: i for i, label in enumerate(labels)}
    proba = np.asarray(
        [[float(r.get("scores", {}).get(label, 0.0)) for label in labels] for r in results],
        dtype=np.float64,
    )
    y_true = np.asarray([index[t] for t in truth], dtype=np.int64)
    f1 = f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0)
    auc = roc_auc(y_true, proba) if proba.shape[1] >= 2 else None
    assert accuracy is not None  # rows is never empty here
    return VersionScores(version.version, accuracy, low, high, float(f1), auc)
