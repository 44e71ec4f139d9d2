"""The tabular-classifier recipe on real bundled data (scikit-learn's breast cancer and
wine sets written to CSV) and on generated imbalanced data."""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn import datasets

from modelmint.serving.predictors.torch_state import quantize
from modelmint.training.recipe import DataError, Splits
from modelmint.training.recipes.tabular import TabularClassifier
from modelmint.training.tables import Table


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sklearn_csv(path: Path, loader: Any, target: str) -> Path:
    bunch = loader()
    names = [str(n) for n in bunch.target_names]
    rows = [[*map(float, x), names[y]] for x, y in zip(bunch.data, bunch.target, strict=True)]
    return write_csv(path, [*map(str, bunch.feature_names), target], rows)


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cancer")
    return sklearn_csv(directory / "cancer.csv", datasets.load_breast_cancer, "diagnosis")


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sklearn_csv(tmp_path_factory.mktemp("wine") / "wine.csv", datasets.load_wine, "cultivar")


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[str, int, int, dict[str, float]]] = []
        self.stop_after = stop_after

    def __call__(self, stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        self.calls.append((stage, done, total, dict(metrics)))
        if self.stop_after is not None and done == self.stop_after:
            raise KeyboardInterrupt  # what a user pressing Ctrl-C mid-run raises


@pytest.fixture(scope="module")
def cancer(cancer_csv: Path) -> tuple[TabularClassifier, Splits[Table], Recorder]:
    recipe = TabularClassifier(target="diagnosis", seed=0)
    splits = recipe.split(recipe.load_data(str(cancer_csv)))
    recorder = Recorder()
    assert recipe.fit(splits.train, splits.val, progress=recorder) is recipe
    return recipe, splits, recorder


def test_breast_cancer_reaches_roc_auc_097_with_the_baseline_beside_it(
    cancer: tuple[TabularClassifier, Splits[Table], Recorder],
) -> None:
    recipe, splits, _ = cancer

    report = recipe.evaluate(splits.test)

    assert report["roc_auc"] >= 0.97
    assert report["accuracy"] >= 0.93
    assert report["baseline"]["model"] == "HistGradientBoostingClassifier"
    assert report["baseline"]["roc_auc"] >= 0.95
    assert set(report["per_class"]) == {"malignant", "benign"}
    assert sum(map(sum, report["confusion_matrix"]["matrix"])) == len(splits.test)
    assert 0.0 <= report["calibration"]["ece"] <= 0.1
    assert json.loads(json.dumps(report)) == report


def test_feature_importances_rank_every_feature_column(
    cancer: tuple[TabularClassifier, Splits[Table], Recorder],
) -> None:
    recipe, splits, _ = cancer

    importances = recipe.evaluate(splits.test)["feature_importances"]

    assert sorted(i["feature"] for i in importances) == sorted(splits.test.feature_order)
    means = [i["mean"] for i in importances]
    assert means == sorted(means, reverse=True)
    assert means[0] > 0  # shuffling the most useful feature costs some AUC


def test_progress_reports_each_epoch_with_loss_and_validation_auc(
    cancer: tuple[TabularClassifier, Splits[Table], Recorder],
) -> None:
    recipe, _, recorder = cancer

    assert [c[1] for c in recorder.calls] == list(range(1, recipe.epochs_trained_ + 1))
    assert all(c[0] == "epoch" and c[2] == recipe.epochs for c in recorder.calls)
    assert all({"loss", "roc_auc", "val_loss"} <= set(c[3]) for c in recorder.calls)
    assert recorder.calls[-1][3]["loss"] < recorder.calls[0][3]["loss"]


def test_torch_module_on_example_inputs_gives_the_recipe_predictions(
    cancer: tuple[TabularClassifier, Splits[Table], Recorder],
) -> None:
    recipe, splits, _ = cancer
    (inputs,) = recipe.example_inputs()
    rows = splits.train.take(np.arange(len(inputs), dtype=np.int64))

    logits = recipe.torch_module()(inputs)

    expected = recipe.predict_proba(rows)
    assert torch.softmax(logits.double(), dim=1).detach().numpy() == pytest.approx(expected)


def test_a_quantized_module_is_used_for_evaluation(
    cancer: tuple[TabularClassifier, Splits[Table], Recorder],
) -> None:
    fitted, splits, _ = cancer
    recipe = copy.deepcopy(fitted)
    before = recipe.predict_proba(splits.test)
    quantized = quantize(recipe.torch_module())

    recipe.use_module(quantized)

    after = recipe.predict_proba(splits.test)
    assert recipe.torch_module() is quantized
    assert not np.array_equal(before, after)  # int8 weights shift the scores a little
    assert np.abs(before - after).max() < 0.1
    assert recipe.evaluate(splits.test)["roc_auc"] >= 0.95


def test_wine_multiclass(wine_csv: Path) -> None:
    recipe = TabularClassifier(target="cultivar", seed=0)
    splits = recipe.split(recipe.load_data(str(wine_csv)))

    report = recipe.fit(splits.train, splits.val).evaluate(splits.test)

    assert report["accuracy"] >= 0.9
    assert report["roc_auc"] >= 0.97
    assert report["confusion_matrix"]["labels"] == ["class_0", "class_1", "class_2"]
    assert len(report["per_class"]) == 3


def imbalanced_csv(path: Path, rows: int = 2000, positive_share: float = 0.05) -> Path:
    rng = np.random.default_rng(7)
    y = (rng.random(rows) < positive_share).astype(int)
    x = rng.normal(size=(rows, 4))
    x[:, :2] += 1.3 * y[:, None]  # positives sit a little apart, overlapping the rest
    data = [[*map(float, features), label] for features, label in zip(x, y, strict=True)]
    return write_csv(path, ["a", "b", "c", "d", "fraud"], data)


def test_balanced_class_weights_raise_minority_recall(tmp_path: Path) -> None:
    path = imbalanced_csv(tmp_path / "fraud.csv")
    recalls = {}
    for weighting in ("balanced", None):
        recipe = TabularClassifier(
            target="fraud", class_weight=weighting, baseline=False, epochs=40, seed=0
        )
        splits = recipe.split(recipe.load_data(str(path)))
        report = recipe.fit(splits.train, splits.val).evaluate(splits.test)
        recalls[weighting] = report["per_class"]["1"]["recall"]
    assert report["per_class"]["1"]["support"] >= 15
    assert recalls["balanced"] >= recalls[None] + 0.3
    assert recalls["balanced"] >= 0.6


def test_same_seed_gives_the_same_report(wine_csv: Path) -> None:
    reports = []
    for _ in range(2):
        recipe = TabularClassifier(target="cultivar", seed=3, epochs=10)
        splits = recipe.split(recipe.load_data(str(wine_csv)))
        reports.append(recipe.fit(splits.train, splits.val).evaluate(splits.test))
    assert reports[0] == reports[1]


def test_interrupted_training_resumes_at_the_next_epoch_and_ends_the_same(
    wine_csv: Path, tmp_path: Path
) -> None:
    params: dict[str, Any] = {
        "target": "cultivar",
        "seed": 1,
        "epochs": 6,
        "patience": 50,
        "baseline": False,
    }
    data = TabularClassifier(**params).load_data(str(wine_csv))
    splits = TabularClassifier(**params).split(data)
    straight = TabularClassifier(**params).fit(splits.train, splits.val)

    with pytest.raises(KeyboardInterrupt):
        TabularClassifier(**params).fit(
            splits.train, splits.val, progress=Recorder(stop_after=2), checkpoint_dir=tmp_path
        )
    recorder = Recorder()
    resumed = TabularClassifier(**params).fit(
        splits.train, splits.val, progress=recorder, checkpoint_dir=tmp_path
    )

    assert [c[1] for c in recorder.calls] == [3, 4, 5, 6]
    assert resumed.evaluate(splits.test) == straight.evaluate(splits.test)
    with pytest.raises(DataError, match="different parameters"):
        TabularClassifier(**{**params, "lr": 0.01}).fit(splits.train, checkpoint_dir=tmp_path)


def test_group_column_gives_per_group_metrics_and_is_not_a_feature(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    region = rng.choice(["north", "south"], size=300)
    rows = [[*map(float, f), g, t] for f, g, t in zip(x, region, y, strict=True)]
    path = write_csv(tmp_path / "g.csv", ["x0", "x1", "x2", "region", "y"], rows)
    recipe = TabularClassifier(target="y", group="region", epochs=30, seed=0)
    splits = recipe.split(recipe.load_data(str(path)))

    report = recipe.fit(splits.train, splits.val).evaluate(splits.test)

    assert set(report["per_group"]) == {"north", "south"}
    assert sum(g["rows"] for g in report["per_group"].values()) == len(splits.test)
    assert set(report["baseline"]["per_group"]) == {"north", "south"}
    assert "region" not in {i["feature"] for i in report["feature_importances"]}
    assert report["roc_auc"] >= 0.95


def test_categorical_feature_and_missing_values_train_end_to_end(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    plans = rng.choice(["basic", "pro", "team"], size=400)
    usage, tenure = rng.normal(size=(2, 400))
    churned = ((plans == "basic") & (usage < 0.5)).astype(int)
    rows = zip(usage, tenure, plans, churned, strict=True)
    cells = [
        ["" if i % 10 == 0 else float(u), float(t), p, c] for i, (u, t, p, c) in enumerate(rows)
    ]
    path = write_csv(tmp_path / "churn.csv", ["usage", "tenure", "plan", "churned"], cells)
    recipe = TabularClassifier(target="churned", categorical="plan", epochs=60, seed=0)
    data = recipe.load_data(str(path))
    splits = recipe.split(data)

    report = recipe.fit(splits.train, splits.val).evaluate(splits.test)

    assert data.missing == {"usage": 40}
    assert report["roc_auc"] >= 0.9
    assert recipe.preprocessing_.vocabularies == (("basic", "pro", "team"),)


def test_without_validation_every_epoch_is_trained(wine_csv: Path) -> None:
    recorder = Recorder()
    recipe = TabularClassifier(target="cultivar", epochs=5, patience=1, baseline=False)
    data = recipe.load_data(str(wine_csv))

    recipe.fit(data, progress=recorder)

    assert [c[1] for c in recorder.calls] == [1, 2, 3, 4, 5]
    assert all(set(c[3]) == {"loss"} for c in recorder.calls)
    assert "baseline" not in recipe.evaluate(data)


def test_params_round_trip_and_bad_params_are_refused(wine_csv: Path) -> None:
    recipe = TabularClassifier(target="cultivar", hidden_sizes="32,16", class_weight=None)
    again = TabularClassifier(**recipe.get_params())
    assert again.get_params() == recipe.get_params()
    with pytest.raises(DataError, match="no parameter 'hidden'"):
        recipe.set_params(hidden=3)
    data = recipe.load_data(str(wine_csv))
    for bad in ({"hidden_sizes": "wide"}, {"class_weight": "heavy"}, {"dropout": 1.5}):
        with pytest.raises(DataError):
            TabularClassifier(target="cultivar", **bad).fit(data)


def test_bundled_sets_load_by_name() -> None:
    table = TabularClassifier().load_data("sklearn:breast_cancer")
    assert len(table) == 569 and table.labels == ("malignant", "benign")
    with pytest.raises(DataError, match="unknown bundled set"):
        TabularClassifier().load_data("sklearn:titanic")


def test_added_rows_join_only_the_training_part(cancer_csv: Path, tmp_path: Path) -> None:
    """``--add-data``: a feedback file (here of one class only) grows the training part;
    validation and test stay the original data's, and a row repeating a test input is
    left out rather than trained on."""
    from modelmint.training.runs import add_training_rows

    recipe = TabularClassifier(target="diagnosis")
    splits = recipe.split(recipe.load_data(str(cancer_csv)))
    (test_input, _), *_ = recipe.labelled_inputs(splits.test)
    new_input = {name: value + 1000.0 for name, value in test_input.items()}
    names = list(test_input)
    feedback = write_csv(
        tmp_path / "feedback.csv",
        [*names, "diagnosis"],
        [[row[n] for n in names] + ["malignant"] for row in (test_input, new_input)],
    )

    grown, added, left_out = add_training_rows(recipe, splits, [str(feedback)])

    assert (added, left_out) == (1, 1)
    assert len(grown.train) == len(splits.train) + 1
    assert grown.val is splits.val and grown.test is splits.test
    last_input, last_label = recipe.labelled_inputs(grown.train)[-1]
    assert last_input == new_input and last_label == "malignant"
