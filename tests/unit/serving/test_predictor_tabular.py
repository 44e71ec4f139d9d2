"""An exported tabular classifier served by its predictor answers exactly as the recipe."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

from modelmint.errors import InvalidRequest
from modelmint.serving.predictors import load_predictor
from modelmint.serving.predictors.tabular import TabularPredictor
from modelmint.serving.predictors.torch_state import quantize
from modelmint.training.recipe import Splits
from modelmint.training.recipes.tabular import TabularClassifier
from modelmint.training.tables import Table


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TabularClassifier, Splits[Table]]:
    rng = np.random.default_rng(5)
    n = 300
    plan = rng.choice(["basic", "pro", "team"], size=n)
    usage, tenure = rng.normal(size=(2, n))
    risk = usage + (plan == "basic") * 1.5 - 0.3 * tenure
    label = np.where(risk > 1.0, "high", np.where(risk > 0.0, "medium", "low"))
    path = tmp_path_factory.mktemp("risk") / "risk.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["usage", "plan", "tenure", "region", "risk"])
        for i in range(n):
            cell = "" if i % 15 == 0 else float(usage[i])  # some unknown usage values
            writer.writerow([cell, plan[i], float(tenure[i]), f"r{i % 3}", label[i]])
    recipe = TabularClassifier(
        target="risk", categorical=["plan"], group="region", epochs=25, baseline=False, seed=0
    )
    splits = recipe.split(recipe.load_data(str(path)))
    return recipe.fit(splits.train, splits.val), splits


def rows_of(table: Table) -> list[dict[str, Any]]:
    """The table's rows as a client would send them: null for a missing number."""
    items = []
    for i in range(len(table)):
        item: dict[str, Any] = {}
        for j, name in enumerate(table.numeric_columns):
            value = float(table.numeric[i, j])
            item[name] = None if math.isnan(value) else value
        for j, name in enumerate(table.categorical_columns):
            item[name] = table.categorical[i, j]
        items.append(item)
    return items


def test_exported_predictor_matches_the_recipe(
    trained: tuple[TabularClassifier, Splits[Table]], tmp_path: Path
) -> None:
    recipe, splits = trained
    exported = recipe.export(tmp_path)

    predictor = load_predictor(tmp_path, threads=1)

    assert isinstance(predictor, TabularPredictor) and predictor.task == "classification"
    assert set(exported.files) | {"manifest.json"} == {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "manifest.json").read_text())["kind"] == "tabular-classifier"
    items = [predictor.validate(item) for item in rows_of(splits.test)]
    results = predictor.predict(items)
    expected = recipe.predict_proba(splits.test)
    labels = list(recipe.preprocessing_.labels)
    assert [r["label"] for r in results] == recipe.predict(splits.test)
    for result, row in zip(results, expected, strict=True):
        assert [result["scores"][label] for label in labels] == pytest.approx(row.tolist())
        assert sum(result["scores"].values()) == pytest.approx(1.0)
    assert any(item["usage"] is None for item in rows_of(splits.test))
    assert json.loads(json.dumps(results)) == results


def test_validate_refuses_wrong_features_and_types(
    trained: tuple[TabularClassifier, Splits[Table]], tmp_path: Path
) -> None:
    recipe, _ = trained
    recipe.export(tmp_path)
    predictor = load_predictor(tmp_path, threads=1)
    good = {"usage": 0.3, "plan": "pro", "tenure": 1.0}

    predictor.validate(good)
    predictor.validate({**good, "usage": None, "plan": None})
    predictor.validate({**good, "risk": "low", "region": "r1"})  # target/group ride along
    with pytest.raises(InvalidRequest, match="missing tenure"):
        predictor.validate({"usage": 0.3, "plan": "pro"})
    with pytest.raises(InvalidRequest, match="unknown colour"):
        predictor.validate({**good, "colour": "red"})
    with pytest.raises(InvalidRequest, match="'usage' must be a number or null, got str"):
        predictor.validate({**good, "usage": "high"})
    with pytest.raises(InvalidRequest, match="'tenure' must be a number"):
        predictor.validate({**good, "tenure": True})
    with pytest.raises(InvalidRequest, match="'plan' is categorical"):
        predictor.validate({**good, "plan": 2.5})
    with pytest.raises(InvalidRequest, match="object of feature name"):
        predictor.validate([0.3, "pro", 1.0])


def test_unseen_category_and_missing_number_still_get_scores(
    trained: tuple[TabularClassifier, Splits[Table]], tmp_path: Path
) -> None:
    recipe, _ = trained
    recipe.export(tmp_path)
    predictor = load_predictor(tmp_path, threads=1)

    (result,) = predictor.predict(
        [predictor.validate({"usage": None, "plan": "gold", "tenure": 0})]
    )

    assert result["label"] in {"low", "medium", "high"}
    assert sum(result["scores"].values()) == pytest.approx(1.0)
    description = predictor.describe()
    assert description["features"] == {"usage": "number", "plan": "category", "tenure": "number"}
    assert description["labels"] == ["high", "low", "medium"]


def test_a_quantized_export_serves_the_quantized_predictions(
    trained: tuple[TabularClassifier, Splits[Table]], tmp_path: Path
) -> None:
    recipe, splits = trained
    fitted = TabularClassifier(**recipe.get_params()).fit(splits.train, splits.val)
    fitted.use_module(quantize(fitted.torch_module()))

    exported = fitted.export(tmp_path)
    predictor = load_predictor(tmp_path, threads=1)

    assert exported.serving["quantization"] == "dynamic-int8"
    results = predictor.predict([predictor.validate(item) for item in rows_of(splits.test)])
    labels = list(fitted.preprocessing_.labels)
    served = np.array([[r["scores"][label] for label in labels] for r in results])
    assert served == pytest.approx(fitted.predict_proba(splits.test))


def test_a_pruned_module_exports_plain_weights(
    trained: tuple[TabularClassifier, Splits[Table]], tmp_path: Path
) -> None:
    recipe, splits = trained
    fitted = TabularClassifier(**recipe.get_params()).fit(splits.train, splits.val)
    module = fitted.torch_module()
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            prune.l1_unstructured(layer, "weight", amount=0.5)  # type: ignore[no-untyped-call]
    fitted.use_module(module)

    fitted.export(tmp_path)
    predictor = load_predictor(tmp_path, threads=1)

    results = predictor.predict([predictor.validate(item) for item in rows_of(splits.test)])
    labels = list(fitted.preprocessing_.labels)
    served = np.array([[r["scores"][label] for label in labels] for r in results])
    assert served == pytest.approx(fitted.predict_proba(splits.test))
