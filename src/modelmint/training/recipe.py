"""The one shape every training recipe has, after scikit-learn's estimators.

``__init__`` only stores hyperparameters (so ``get_params`` can read them back from
the signature), ``fit`` learns and returns ``self``, learned state ends in ``_``,
``evaluate`` returns a metrics report and ``export`` writes a servable artifact.
Data loading and splitting belong to the recipe because each kind of data
(tables, image folders, ratings, texts, chats) has its own checks.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar

import numpy as np
from numpy.typing import NDArray

from modelmint.training.errors import DataError, NotFittedError
from modelmint.training.splits import split_indices

if TYPE_CHECKING:
    import torch

__all__ = [
    "DataError",
    "Export",
    "NotFittedError",
    "Progress",
    "Recipe",
    "SearchSpace",
    "Splits",
    "TorchBacked",
    "silent",
]

D = TypeVar("D")

# Optuna search space: name -> ("float", low, high) | ("log", low, high)
# | ("int", low, high) | ("choice", [values...]).
SearchSpace = dict[str, tuple[Any, ...]]

# Called as progress(stage, done, total, metrics): the CLI draws a Rich bar from it,
# tests pass ``silent``. ``total`` is 0 when the stage cannot say how long it is.
Progress = Callable[[str, int, int, Mapping[str, float]], None]


def silent(stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
    """A progress callback that reports nothing."""


@dataclass(frozen=True, slots=True)
class Splits(Generic[D]):
    train: D
    val: D
    test: D


@dataclass(frozen=True, slots=True)
class Export:
    """What ``export`` wrote: how to serve it, and the files that make it up.

    ``kind`` names the predictor that loads the folder (``modelmint.serving.predictors``);
    ``task`` is the gateway endpoint family (classification, recommendation, chat).
    """

    kind: str
    task: str
    format: str
    files: tuple[str, ...]
    serving: dict[str, Any] = field(default_factory=dict)

    def write_manifest(self, directory: Path) -> Path:
        path = directory / "manifest.json"
        manifest = {
            "kind": self.kind,
            "task": self.task,
            "format": self.format,
            "files": list(self.files),
            "serving": self.serving,
        }
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        return path


class TorchBacked(Protocol):
    """A fitted recipe whose predictions come from one torch network: what compression
    (quantization, pruning) and ONNX export work on."""

    def torch_module(self) -> torch.nn.Module:
        """The fitted network in eval mode, taking ``example_inputs()``."""

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """A small batch of already-preprocessed inputs, for tracing and parity checks."""

    def use_module(self, module: torch.nn.Module) -> None:
        """Predict (evaluate, export) with ``module`` from now on, e.g. a quantized copy."""


class Recipe(ABC, Generic[D]):
    """Base of every recipe. Subclasses set ``name`` and ``task`` and take keyword
    hyperparameters in ``__init__``, each stored under its own name, ``seed``,
    ``test_fraction`` and ``val_fraction`` among them.

    Evaluation, cross-validation and tuning are generic: they only need ``rows``,
    ``subset`` and ``labels`` from the recipe, plus the metric it is judged by.
    Each epoch, ``fit`` calls ``progress("epoch", epoch, epochs, metrics)`` with
    ``metrics[primary_metric]`` measured on ``val`` when ``val`` was given; tuning
    prunes hopeless trials from those reports.
    """

    name: ClassVar[str]
    task: ClassVar[str]
    # The metric model selection and tuning optimise, a key of evaluate()'s report.
    primary_metric: ClassVar[str]
    greater_is_better: ClassVar[bool] = True
    tuning_space: ClassVar[SearchSpace] = {}

    @classmethod
    def param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def set_params(self, **params: Any) -> Self:
        known = set(self.param_names())
        for key, value in params.items():
            if key not in known:
                raise DataError(
                    f"{self.name} has no parameter {key!r}; it has: {', '.join(sorted(known))}"
                )
            setattr(self, key, value)
        return self

    def check_fitted(self) -> None:
        learned = [k for k in vars(self) if k.endswith("_") and not k.startswith("_")]
        if not learned:
            raise NotFittedError(f"{self.name} is not fitted yet: call fit first")

    @abstractmethod
    def load_data(self, source: str) -> D:
        """Read and check ``source`` (a path, or a named bundled set such as
        ``sklearn:digits``); raise DataError naming the problem when it is unusable.
        An instance method because hyperparameters such as the target column decide
        what a valid file looks like."""

    @abstractmethod
    def rows(self, data: D) -> int:
        """How many examples ``data`` holds."""

    @abstractmethod
    def subset(self, data: D, indices: NDArray[np.int64]) -> D:
        """The examples at ``indices``, in that order."""

    def labels(self, data: D) -> Sequence[object] | None:
        """One class label per example when splits should be stratified, else None."""
        return None

    def labelled_inputs(self, data: D) -> list[tuple[Any, str]]:
        """Each example as the input a client sends the served model, with its true label.

        What adding rows from another source and comparing versions on shared held-out
        rows need: two rows are the same example when their inputs are equal. Recipes
        whose examples are not single labelled inputs (chats, interactions) keep this
        refusal."""
        raise DataError(
            f"{self.name} has no labelled inputs: it cannot add rows from another source "
            "(--add-data) or be measured on shared held-out rows"
        )

    def load_rows(self, source: str) -> D:
        """Read labelled rows that are not a whole training set (rows to add to one, rows
        to measure versions on): checked as ``load_data`` checks them, except that one
        class is enough (feedback may correct every answer towards the same label)."""
        return self.load_data(source)

    def concat(self, first: D, more: D) -> D:
        """``first`` followed by ``more``, as one dataset: how ``--add-data`` rows join the
        training part. ``more`` must have ``first``'s features and no class it lacks."""
        raise DataError(f"{self.name} cannot add rows from another source (--add-data)")

    def split(self, data: D) -> Splits[D]:
        """A deterministic train/validation/test split, driven by ``self.seed``."""
        train, val, test = split_indices(
            self.rows(data),
            seed=int(getattr(self, "seed", 0)),
            test_fraction=float(getattr(self, "test_fraction", 0.2)),
            val_fraction=float(getattr(self, "val_fraction", 0.1)),
            stratify=self.labels(data),
        )
        return Splits(self.subset(data, train), self.subset(data, val), self.subset(data, test))

    @abstractmethod
    def fit(
        self,
        train: D,
        val: D | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        """Learn from ``train``; ``val`` drives early stopping or model selection.
        With ``checkpoint_dir``, save state after every epoch and resume from it."""

    def refit(
        self,
        train: D,
        val: D | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        """After ``fit(train, val)`` chose epochs (or more) on ``val``: learn again from
        ``train`` and ``val`` together with those choices, so that no labelled row but
        the test ones is left unused. ``modelmint train`` calls it after ``fit``. The
        default keeps the fitted model: a recipe overrides it where its choices can
        be replayed."""
        return self

    @abstractmethod
    def evaluate(self, data: D) -> dict[str, Any]:
        """Metrics on ``data``: JSON-serialisable, numbers as Python floats/ints."""

    @abstractmethod
    def export(self, directory: Path) -> Export:
        """Write a servable artifact into ``directory`` (which exists and is empty)."""
