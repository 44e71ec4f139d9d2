"""The ``tabular-classifier`` recipe: a torch MLP over a CSV table, with a
scikit-learn gradient-boosting baseline trained on the same split for comparison.

    modelmint train tabular-classifier --data churn.csv --param target=churned \\
        --param categorical=plan,region --param group=region

Class imbalance is handled by weighting the loss (``class_weight="balanced"``, for
the baseline too); training stops early when the validation ROC-AUC has not
improved for ``patience`` epochs and keeps the best epoch's weights. The report
adds permutation feature importances and, with a group column, per-group metrics.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.typing import NDArray

from modelmint.serving.predictors.tabular import KIND, TabularNet, TabularPreprocessing
from modelmint.training import distributed
from modelmint.training.classification_metrics import accuracy, classification_report, roc_auc
from modelmint.training.epoch_loop import (
    Trainee,
    Validation,
    fit_epochs,
    shuffled_batches,
    step_batches,
    torch_threads,
)
from modelmint.training.recipe import (
    DataError,
    Export,
    Progress,
    SearchSpace,
    silent,
)
from modelmint.training.tables import Table, concat_tables, fit_preprocessing, read_table
from modelmint.training.torch_backed import TorchBackedRecipe

__all__ = ["TabularClassifier"]

BUNDLED = ("breast_cancer", "wine", "iris")


def _names(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Column names given as a list or, from the command line, as "a,b"."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(str(v) for v in value)


def _sizes(value: str | int | Sequence[int]) -> tuple[int, ...]:
    """Hidden layer widths given as a list, an int or "128,64" ("" = no hidden layer)."""
    if isinstance(value, int):
        parts: Sequence[object] = [value]
    elif isinstance(value, str):
        parts = [p for p in value.split(",") if p.strip()]
    else:
        parts = list(value)
    try:
        sizes = tuple(int(str(p).strip()) for p in parts)
    except ValueError as exc:
        raise DataError(f"hidden_sizes must be integers like 128,64; got {value!r}") from exc
    if any(s < 1 for s in sizes):
        raise DataError(f"hidden_sizes must be positive; got {value!r}")
    return sizes


def _balanced(value: str | None) -> bool:
    if value is None or str(value).lower() in ("", "none"):
        return False
    if str(value).lower() == "balanced":
        return True
    raise DataError(f"class_weight must be 'balanced' or None; got {value!r}")


def _bundled(name: str) -> Table:
    """A scikit-learn bundled set as a table (``sklearn:breast_cancer``, ...)."""
    from sklearn import datasets

    loaders = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "iris": datasets.load_iris,
    }
    if name not in loaders:
        raise DataError(f"unknown bundled set sklearn:{name}; known: {', '.join(BUNDLED)}")
    bunch = loaders[name]()
    names = tuple(str(n) for n in bunch.feature_names)
    labels = tuple(str(n) for n in bunch.target_names)
    return Table(
        source=f"sklearn:{name}",
        target="target",
        feature_order=names,
        numeric_columns=names,
        categorical_columns=(),
        numeric=np.asarray(bunch.data, dtype=np.float64),
        categorical=np.empty((len(bunch.target), 0), dtype=object),
        y=np.asarray(bunch.target, dtype=np.int64),
        labels=labels,
    )


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run the small network and the baseline on one thread.

    A batch here is microseconds of work; on a busy machine every extra intra-op
    thread (torch's, and the OpenMP pool of the gradient-boosting baseline) mostly
    waits for a core. Measured on 2 shared cores: an MLP fit took 27 s with 2 threads
    and 1 s with one, the baseline 20 s and 0.6 s.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with torch_threads(1), threadpool_limits(limits=1):
        yield


class TabularClassifier(TorchBackedRecipe[Table]):
    name: ClassVar[str] = "tabular-classifier"
    task: ClassVar[str] = "classification"
    primary_metric: ClassVar[str] = "roc_auc"
    tuning_space: ClassVar[SearchSpace] = {
        "hidden_sizes": ("choice", ["64", "128,64", "256,128", "64,32"]),
        "dropout": ("float", 0.0, 0.5),
        "lr": ("log", 1e-4, 1e-2),
        "weight_decay": ("log", 1e-6, 1e-2),
        "batch_size": ("choice", [32, 64, 128]),
    }

    def __init__(
        self,
        *,
        target: str = "target",
        categorical: str | Sequence[str] = (),
        group: str | None = None,
        hidden_sizes: str | int | Sequence[int] = (64, 32),
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 100,
        batch_size: int = 64,
        # Epochs without a lower validation loss before stopping: 10 rides out the
        # noise of a small validation split without training long past the best epoch.
        patience: int = 10,
        class_weight: str | None = "balanced",
        baseline: bool = True,
        importance_repeats: int = 5,
        seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
    ) -> None:
        self.target = target
        self.categorical = categorical
        self.group = group
        self.hidden_sizes = hidden_sizes
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.class_weight = class_weight
        self.baseline = baseline
        self.importance_repeats = importance_repeats
        self.seed = seed
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction

    # -- data ---------------------------------------------------------------------

    def load_data(self, source: str) -> Table:
        return self._load(source, min_classes=2)

    def load_rows(self, source: str) -> Table:
        return self._load(source, min_classes=1)

    def _load(self, source: str, *, min_classes: int) -> Table:
        if source.startswith("sklearn:"):
            return _bundled(source.removeprefix("sklearn:"))
        return read_table(
            Path(source),
            target=self.target,
            categorical=_names(self.categorical),
            group=self.group or None,
            min_classes=min_classes,
        )

    def rows(self, data: Table) -> int:
        return len(data)

    def subset(self, data: Table, indices: NDArray[np.int64]) -> Table:
        return data.take(indices)

    def labels(self, data: Table) -> Sequence[object]:
        return [int(v) for v in data.y]

    def labelled_inputs(self, data: Table) -> list[tuple[Any, str]]:
        return list(zip(data.inputs(), [data.labels[i] for i in data.y.tolist()], strict=True))

    def concat(self, first: Table, more: Table) -> Table:
        return concat_tables(first, more)

    # -- training -----------------------------------------------------------------

    def fit(
        self,
        train: Table,
        val: Table | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        with _one_thread():
            return self._fit(train, val, progress, checkpoint_dir)

    def _fit(
        self, train: Table, val: Table | None, progress: Progress, checkpoint_dir: Path | None
    ) -> Self:
        self._check_params()
        distributed.init()
        prep = fit_preprocessing(train)
        x_train = prep.transform(train.numeric, train.categorical)
        torch.manual_seed(self.seed)
        net = TabularNet(prep.width, _sizes(self.hidden_sizes), len(prep.labels), self.dropout)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        model = distributed.wrap(net)
        loss_fn = torch.nn.CrossEntropyLoss(weight=self._loss_weights(train))

        def loss_of(rows: NDArray[np.int64]) -> torch.Tensor:
            loss: torch.Tensor = loss_fn(
                model(torch.from_numpy(x_train[rows])), torch.from_numpy(train.y[rows])
            )
            return loss

        def train_epoch(epoch: int) -> dict[str, float]:
            model.train()
            rng = np.random.default_rng([self.seed, epoch])
            batches = shuffled_batches(rng, len(train.y), self.batch_size)
            return {"loss": step_batches(optimizer, batches, loss_of)}

        validate = None
        if val is not None and len(val):
            validate = functools.partial(self._validate, net, loss_fn, prep, val)
        state = fit_epochs(
            Trainee(net, optimizer),
            epochs=self.epochs,
            train_epoch=train_epoch,
            validate=validate,
            patience=self.patience,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            params=self.get_params(),
        )
        self.preprocessing_ = prep
        self.net_ = net.eval()
        self.history_ = state.history
        self.epochs_trained_ = state.epoch
        self.sample_ = x_train[: min(8, len(x_train))]
        self._module = None
        self.baseline_ = self._fit_baseline(x_train, train.y) if self.baseline else None
        return self

    def _check_params(self) -> None:
        _sizes(self.hidden_sizes)
        _balanced(self.class_weight)
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise DataError("epochs, batch_size and patience must be at least 1")
        if not 0 <= self.dropout < 1:
            raise DataError(f"dropout must be in [0, 1); got {self.dropout}")

    def _loss_weights(self, train: Table) -> torch.Tensor | None:
        if not _balanced(self.class_weight):
            return None
        # "balanced" as scikit-learn defines it: n / (classes * count of the class).
        counts = np.bincount(train.y, minlength=len(train.labels)).clip(min=1)
        return torch.tensor(len(train) / (len(train.labels) * counts), dtype=torch.float32)

    def _validate(
        self, net: torch.nn.Module, loss_fn: torch.nn.Module, prep: TabularPreprocessing, val: Table
    ) -> Validation:
        """Validation metrics of this epoch, scored by the validation loss: the loss
        (the training objective, class weights and all) is smooth where a small
        split's ROC-AUC sits at 1.0 or jumps between ties, so it is what early
        stopping and the choice of the best epoch watch."""
        with torch.inference_mode():
            logits = net.eval()(torch.from_numpy(prep.transform(val.numeric, val.categorical)))
            loss = float(loss_fn(logits, torch.from_numpy(val.y)))
        proba = torch.softmax(logits.double(), dim=1).numpy()
        auc = roc_auc(val.y, proba)
        # A validation split holding one class has no AUC; accuracy stands in.
        score = auc if auc is not None else accuracy(val.y, proba.argmax(axis=1))
        return Validation({"val_loss": loss, self.primary_metric: score}, (-loss,))

    def _fit_baseline(self, x: NDArray[np.float32], y: NDArray[np.int64]) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(
            random_state=self.seed,
            class_weight="balanced" if _balanced(self.class_weight) else None,
        )
        return model.fit(x, y)

    # -- prediction and evaluation --------------------------------------------------

    def predict_proba(self, data: Table) -> NDArray[np.float64]:
        """(rows, classes) probabilities from the network in use."""
        self.check_fitted()
        x = self.preprocessing_.transform(data.numeric, data.categorical)
        with _one_thread():
            return _probabilities(self.torch_module(), x)

    def predict(self, data: Table) -> list[str]:
        labels = self.preprocessing_.labels
        return [labels[i] for i in self.predict_proba(data).argmax(axis=1)]

    def evaluate(self, data: Table) -> dict[str, Any]:
        with _one_thread():
            return self._evaluate(data)

    def _evaluate(self, data: Table) -> dict[str, Any]:
        self.check_fitted()
        self._check_labels(data)
        groups = None if data.groups is None else data.groups.tolist()
        labels = self.preprocessing_.labels
        report = classification_report(data.y, self.predict_proba(data), labels, groups)
        if self.baseline_ is not None:
            x = self.preprocessing_.transform(data.numeric, data.categorical)
            proba = np.asarray(self.baseline_.predict_proba(x), dtype=np.float64)
            report["baseline"] = {
                "model": "HistGradientBoostingClassifier",
                **classification_report(data.y, proba, labels, groups),
            }
        report["feature_importances"] = self._importances(data)
        report["epochs_trained"] = self.epochs_trained_
        return report

    def _check_labels(self, data: Table) -> None:
        if data.labels != self.preprocessing_.labels:
            raise DataError(
                f"{data.source}: classes {', '.join(data.labels)} differ from the ones the "
                f"model was trained on ({', '.join(self.preprocessing_.labels)})"
            )

    def _score(self, data: Table) -> float:
        proba = self.predict_proba(data)
        auc = roc_auc(data.y, proba)
        return auc if auc is not None else accuracy(data.y, proba.argmax(axis=1))

    def _importances(self, data: Table) -> list[dict[str, Any]]:
        """Permutation importance of each feature column: how much the score (ROC-AUC,
        or accuracy when undefined) drops when that column is shuffled."""
        rng = np.random.default_rng(self.seed)
        reference = self._score(data)
        found = []
        for column in data.feature_order:
            drops = [
                reference - self._score(data.with_permuted(column, rng.permutation(len(data))))
                for _ in range(max(self.importance_repeats, 1))
            ]
            found.append(
                {"feature": column, "mean": float(np.mean(drops)), "std": float(np.std(drops))}
            )
        return sorted(found, key=lambda item: (-item["mean"], item["feature"]))

    # -- TorchBacked ----------------------------------------------------------------

    def _trained_network(self) -> torch.nn.Module:
        """The trained MLP (logits out); ``softmax`` of its output gives the scores."""
        return self.net_

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        self.check_fitted()
        return (torch.from_numpy(self.sample_.copy()),)

    # -- export ---------------------------------------------------------------------

    def export(self, directory: Path) -> Export:
        quantization = self._save_weights(directory / "weights.pt")
        config = {
            "inputs": self.preprocessing_.width,
            "hidden_sizes": list(_sizes(self.hidden_sizes)),
            "classes": len(self.preprocessing_.labels),
            "dropout": float(self.dropout),
            "target": self.target,
            "group": self.group or None,
            "quantization": quantization,
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        (directory / "preprocessing.json").write_text(
            json.dumps(self.preprocessing_.to_json(), indent=2)
        )
        exported = Export(
            kind=KIND,
            task=self.task,
            format="torch",
            files=("config.json", "preprocessing.json", "weights.pt"),
            serving={
                "labels": list(self.preprocessing_.labels),
                "features": list(self.preprocessing_.feature_order),
                "quantization": quantization,
            },
        )
        exported.write_manifest(directory)
        return exported


def _probabilities(module: torch.nn.Module, x: NDArray[np.float32]) -> NDArray[np.float64]:
    with torch.inference_mode():
        logits = module(torch.from_numpy(x))
    return np.asarray(torch.softmax(logits.double(), dim=1).numpy(), dtype=np.float64)
