"""Cross-validation over any recipe, shown with a tiny torch recipe on real data.

``LogisticRecipe`` (a logistic regression, or a one-hidden-layer MLP, in torch on
scikit-learn's breast-cancer table) stands in for the real recipes: it implements
the Recipe base and TorchBacked and nothing more. The tuning and compression tests
use it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from torch import nn

from modelmint.training.evaluation import cross_validate, flatten_metrics, fold_indices
from modelmint.training.recipe import (
    DataError,
    Export,
    Progress,
    Recipe,
    SearchSpace,
    TorchBacked,
    silent,
)


@dataclass(frozen=True)
class Table:
    x: NDArray[np.float32]
    y: NDArray[np.int64]


def breast_cancer() -> Table:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return Table(bunch.data.astype(np.float32), bunch.target.astype(np.int64))


class LogisticRecipe(Recipe[Table]):
    """Full-batch gradient descent on standardised features; ``hidden > 0`` adds a
    ReLU layer so that compression has more than one Linear layer to work on."""

    name: ClassVar[str] = "test-logistic"
    task: ClassVar[str] = "classification"
    primary_metric: ClassVar[str] = "accuracy"
    tuning_space: ClassVar[SearchSpace] = {
        "lr": ("log", 1e-5, 1.0),
        "weight_decay": ("choice", [0.0, 1e-3]),
    }

    def __init__(
        self,
        *,
        lr: float = 0.5,
        epochs: int = 20,
        hidden: int = 0,
        weight_decay: float = 0.0,
        seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
    ) -> None:
        self.lr = lr
        self.epochs = epochs
        self.hidden = hidden
        self.weight_decay = weight_decay
        self.seed = seed
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction

    def load_data(self, source: str) -> Table:
        if source != "sklearn:breast_cancer":
            raise DataError(f"unknown source {source!r}")
        return breast_cancer()

    def rows(self, data: Table) -> int:
        return len(data.y)

    def subset(self, data: Table, indices: NDArray[np.int64]) -> Table:
        return Table(data.x[indices], data.y[indices])

    def labels(self, data: Table) -> Sequence[object] | None:
        return data.y.tolist()

    def fit(
        self,
        train: Table,
        val: Table | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        torch.manual_seed(self.seed)
        self.mean_ = train.x.mean(axis=0)
        self.scale_ = train.x.std(axis=0) + 1e-6
        width = train.x.shape[1]
        layers: list[nn.Module] = (
            [nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 2)]
            if self.hidden
            else [nn.Linear(width, 2)]
        )
        self.module_: nn.Module = nn.Sequential(*layers)
        optimizer = torch.optim.SGD(
            self.module_.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        x, y = self._inputs(train), torch.from_numpy(train.y)
        for epoch in range(1, self.epochs + 1):
            self.module_.train()
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(self.module_(x), y)
            loss.backward()
            optimizer.step()
            self.module_.eval()
            metrics = {"loss": float(loss.item())}
            if val is not None:
                metrics.update(self._quick_scores(val))
            progress("epoch", epoch, self.epochs, metrics)
        return self

    def _inputs(self, data: Table) -> torch.Tensor:
        return torch.from_numpy(((data.x - self.mean_) / self.scale_).astype(np.float32))

    def predict_proba(self, data: Table) -> NDArray[np.float64]:
        with torch.inference_mode():
            logits = self.module_(self._inputs(data))
        proba = torch.softmax(logits.double(), dim=1).numpy()
        return proba / proba.sum(axis=1, keepdims=True)

    def _quick_scores(self, data: Table) -> dict[str, float]:
        """The per-epoch scores, without scikit-learn's input validation on every call."""
        proba = self.predict_proba(data)
        picked = proba[np.arange(len(data.y)), data.y]
        return {
            "accuracy": float((proba.argmax(axis=1) == data.y).mean()),
            "log_loss": float(-np.log(np.clip(picked, 1e-15, 1.0)).mean()),
        }

    def evaluate(self, data: Table) -> dict[str, Any]:
        from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

        self.check_fitted()
        proba = self.predict_proba(data)
        predicted = proba.argmax(axis=1)
        precision, recall, _, support = precision_recall_fscore_support(
            data.y, predicted, labels=[0, 1], zero_division=0
        )
        return {
            "accuracy": float((predicted == data.y).mean()),
            "log_loss": float(log_loss(data.y, proba, labels=[0, 1])),
            "per_class": {
                str(c): {
                    "precision": float(precision[c]),
                    "recall": float(recall[c]),
                    "support": int(support[c]),
                }
                for c in (0, 1)
            },
            "labels": ["malignant", "benign"],
            "confusion_matrix": confusion_matrix(data.y, predicted, labels=[0, 1]).tolist(),
        }

    def export(self, directory: Path) -> Export:
        torch.save(self.module_.state_dict(), directory / "weights.pt")
        (directory / "config.json").write_text(json.dumps(self.get_params()))
        export = Export("test-logistic", "classification", "torch", ("weights.pt", "config.json"))
        export.write_manifest(directory)
        return export

    # TorchBacked
    def torch_module(self) -> nn.Module:
        self.check_fitted()
        return self.module_.eval()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        rows = np.random.default_rng(self.seed).normal(size=(32, len(self.mean_)))
        return (torch.from_numpy(rows.astype(np.float32)),)

    def use_module(self, module: nn.Module) -> None:
        self.module_ = module


class UnlabelledRecipe(LogisticRecipe):
    """The same model, but the recipe declares no labels: plain k-fold."""

    def labels(self, data: Table) -> Sequence[object] | None:
        return None


def _implements_torch_backed(recipe: TorchBacked) -> TorchBacked:
    return recipe  # mypy checks the structural match at this call


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These networks are tiny: on a shared 2-core machine torch's second thread only
    # spins and contends (10x slower measured), so the module runs single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> Table:
    return breast_cancer()


# ------------------------------------------------------------------ the test recipe


def test_the_test_recipe_learns_and_is_torch_backed(data: Table) -> None:
    recipe = LogisticRecipe(epochs=30).fit(data)
    backed = _implements_torch_backed(recipe)
    assert recipe.evaluate(data)["accuracy"] > 0.95
    inputs = backed.example_inputs()
    assert backed.torch_module()(*inputs).shape == (32, 2)


# ------------------------------------------------------------------ flatten_metrics


def test_flatten_metrics_keeps_numeric_leaves_with_dotted_names() -> None:
    report: Mapping[str, Any] = {
        "accuracy": 0.9,
        "count": 12,
        "passed": True,
        "name": "x",
        "confusion_matrix": [[1, 2], [3, 4]],
        "per_class": {"a": {"recall": 0.5, "support": 3}, "b": {"recall": 1}},
    }
    assert flatten_metrics(report) == {
        "accuracy": 0.9,
        "count": 12.0,
        "per_class.a.recall": 0.5,
        "per_class.a.support": 3.0,
        "per_class.b.recall": 1.0,
    }


# ------------------------------------------------------------------ folds


def test_stratified_folds_partition_rows_and_keep_class_shares(data: Table) -> None:
    labels: list[object] = data.y.tolist()
    folds = fold_indices(len(labels), 5, seed=3, labels=labels)
    held_out = np.concatenate([test for _, test in folds])
    assert sorted(held_out.tolist()) == list(range(len(labels)))
    share = data.y.mean()
    for train, test in folds:
        assert set(train.tolist()).isdisjoint(test.tolist())
        assert len(train) + len(test) == len(labels)
        # Each class's count per fold differs from its exact share by less than one row.
        assert abs(data.y[test].sum() - share * len(test)) < 1.0


def test_folds_are_the_same_for_the_same_seed_and_differ_for_another() -> None:
    first = fold_indices(50, 5, seed=1)
    again = fold_indices(50, 5, seed=1)
    other = fold_indices(50, 5, seed=2)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(("n", "k"), [(10, 1), (10, 11)])
def test_impossible_fold_counts_are_data_errors(n: int, k: int) -> None:
    with pytest.raises(DataError, match="fold"):
        fold_indices(n, k, seed=0)


def test_a_class_smaller_than_k_is_named() -> None:
    labels: list[object] = [*(["a"] * 10), *(["rare"] * 2)]
    with pytest.raises(DataError, match=r"too few rows of: 'rare' \(2\)$"):
        fold_indices(12, 3, seed=0, labels=labels)


# ------------------------------------------------------------------ cross_validate


def test_cross_validate_reports_each_fold_and_their_mean_and_std(data: Table) -> None:
    recipe = LogisticRecipe(epochs=15, seed=4)
    result = cross_validate(recipe, data, k=4)
    assert result["k"] == 4
    assert result["stratified"] is True
    assert len(result["folds"]) == 4
    accuracies = [fold["accuracy"] for fold in result["folds"]]
    assert result["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert result["std"]["accuracy"] == pytest.approx(np.std(accuracies))
    assert 0.9 < result["mean"]["accuracy"] <= 1.0
    recalls = [fold["per_class"]["1"]["recall"] for fold in result["folds"]]
    assert result["mean"]["per_class.1.recall"] == pytest.approx(np.mean(recalls))
    # Held-out folds together cover every row exactly once.
    supports = sum(
        f["per_class"]["0"]["support"] + f["per_class"]["1"]["support"] for f in result["folds"]
    )
    assert supports == len(data.y)
    assert "confusion_matrix" not in result["mean"]
    json.dumps(result)  # goes into the run report as is


def test_cross_validate_trains_copies_and_leaves_the_recipe_unfitted(data: Table) -> None:
    recipe = LogisticRecipe(epochs=3)
    cross_validate(recipe, data, k=3)
    assert not hasattr(recipe, "module_")


def test_cross_validate_is_deterministic_for_a_seed(data: Table) -> None:
    first = cross_validate(LogisticRecipe(epochs=5, seed=7), data, k=3)
    again = cross_validate(LogisticRecipe(epochs=5, seed=7), data, k=3)
    other = cross_validate(LogisticRecipe(epochs=5, seed=8), data, k=3)
    assert first == again
    assert first["folds"] != other["folds"]


def test_cross_validate_without_labels_uses_plain_folds(data: Table) -> None:
    result = cross_validate(UnlabelledRecipe(epochs=5), data, k=3)
    assert result["stratified"] is False
    assert sum(
        f["per_class"]["0"]["support"] + f["per_class"]["1"]["support"] for f in result["folds"]
    ) == len(data.y)


def test_progress_sees_every_epoch_of_every_fold_then_the_fold(data: Table) -> None:
    calls: list[tuple[str, int, int]] = []

    def record(stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        calls.append((stage, done, total))
        if stage == "cv":
            assert "accuracy" in metrics

    cross_validate(LogisticRecipe(epochs=2), data, k=3, progress=record)
    one_fold = [("epoch", 1, 2), ("epoch", 2, 2)]
    assert calls == [*one_fold, ("cv", 1, 3), *one_fold, ("cv", 2, 3), *one_fold, ("cv", 3, 3)]
