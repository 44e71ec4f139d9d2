"""Serve a tabular classifier exported by the ``tabular-classifier`` recipe.

An item is one row: a mapping of feature name to value (a number, or None when
unknown, for numeric features; a string for categorical ones). The preprocessing
(median imputation, standardisation, one-hot categories) and the network are
defined here once and imported by the recipe, so training and serving cannot
drift apart.

Folder layout: ``manifest.json``, ``config.json`` (network shape),
``preprocessing.json`` (feature order, statistics, vocabularies, labels) and
``weights.pt`` (a torch state dict).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from modelmint.errors import InvalidRequest
from modelmint.serving.predictors.torch_state import QUANTIZED, quantize

__all__ = [
    "KIND",
    "TabularNet",
    "TabularPredictor",
    "TabularPreprocessing",
    "build_module",
    "load",
    "scores_from_logits",
]

KIND = "tabular-classifier"

# One row ready for the network: numeric values (NaN = missing) and category strings.
Row = tuple[list[float], list[str | None]]


class TabularNet(torch.nn.Module):
    """A multilayer perceptron over the preprocessed feature vector; returns logits."""

    def __init__(self, inputs: int, hidden: Sequence[int], classes: int, dropout: float) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        width = inputs
        for size in hidden:
            layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = size
        layers.append(torch.nn.Linear(width, classes))
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (batch, inputs) -> (batch, classes)
        out: torch.Tensor = self.layers(features)
        return out


@dataclass(frozen=True, slots=True)
class TabularPreprocessing:
    """Statistics fitted on the training split, applied the same way to every row later.

    Numeric features: missing values become the training median, then
    ``(x - mean) / std``. Categorical features: missing values become the most
    frequent training category, then one-hot over the training vocabulary (a
    category never seen in training gets all zeros).
    """

    feature_order: tuple[str, ...]
    numeric: tuple[str, ...]
    medians: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    categorical: tuple[str, ...]
    vocabularies: tuple[tuple[str, ...], ...]
    most_frequent: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.vocabularies)

    def transform(
        self, numeric: NDArray[np.float64], categorical: NDArray[np.object_]
    ) -> NDArray[np.float32]:
        """(rows, numeric) and (rows, categorical) raw values -> (rows, width) inputs."""
        rows = numeric.shape[0]
        filled = np.where(np.isnan(numeric), np.asarray(self.medians), numeric)
        scaled = (filled - np.asarray(self.means)) / np.asarray(self.stds)
        blocks = [scaled.reshape(rows, len(self.numeric))]
        for column, vocabulary in enumerate(self.vocabularies):
            fill = self.most_frequent[column]
            values = np.asarray(
                [fill if v is None else str(v) for v in categorical[:, column]], dtype=object
            )
            vocab = np.asarray(vocabulary, dtype=object)
            blocks.append((values[:, None] == vocab[None, :]).astype(np.float64))
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "feature_order": list(self.feature_order),
            "numeric": list(self.numeric),
            "medians": list(self.medians),
            "means": list(self.means),
            "stds": list(self.stds),
            "categorical": list(self.categorical),
            "vocabularies": [list(v) for v in self.vocabularies],
            "most_frequent": list(self.most_frequent),
            "labels": list(self.labels),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TabularPreprocessing:
        return cls(
            feature_order=tuple(data["feature_order"]),
            numeric=tuple(data["numeric"]),
            medians=tuple(float(x) for x in data["medians"]),
            means=tuple(float(x) for x in data["means"]),
            stds=tuple(float(x) for x in data["stds"]),
            categorical=tuple(data["categorical"]),
            vocabularies=tuple(tuple(v) for v in data["vocabularies"]),
            most_frequent=tuple(data["most_frequent"]),
            labels=tuple(data["labels"]),
        )


def build_module(config: Mapping[str, Any], state: Mapping[str, Any]) -> torch.nn.Module:
    """The exported network: rebuilt from its shape, quantized first when it was
    exported quantized (a dynamic-int8 state dict only fits a quantized skeleton)."""
    net: torch.nn.Module = TabularNet(
        int(config["inputs"]),
        [int(h) for h in config["hidden_sizes"]],
        int(config["classes"]),
        float(config["dropout"]),
    )
    if config.get("quantization") == QUANTIZED:
        net = quantize(net)
    net.load_state_dict(state)
    return net.eval()


def scores_from_logits(logits: torch.Tensor, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One ``{"label", "scores"}`` result per row of logits; scores sum to 1."""
    probabilities = torch.softmax(logits.double(), dim=1).tolist()
    results: list[dict[str, Any]] = []
    for row in probabilities:
        best = max(range(len(row)), key=row.__getitem__)
        results.append({"label": labels[best], "scores": dict(zip(labels, row, strict=True))})
    return results


class TabularPredictor:
    task = "classification"

    def __init__(
        self, preprocessing: TabularPreprocessing, net: torch.nn.Module, ignored: Sequence[str]
    ) -> None:
        self._prep = preprocessing
        self._net = net
        # The target and group columns may come along with a row copied from the
        # training file; they are not features, so they are accepted and ignored.
        self._ignored = frozenset(ignored)
        self._numeric = frozenset(preprocessing.numeric)

    def validate(self, item: Any) -> Row:
        if not isinstance(item, Mapping):
            raise InvalidRequest("each input must be an object of feature name -> value")
        expected = set(self._prep.feature_order)
        unknown = sorted(str(k) for k in item if k not in expected and k not in self._ignored)
        missing = [name for name in self._prep.feature_order if name not in item]
        if unknown or missing:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise InvalidRequest(
                f"features do not match the model ({'; '.join(problems)}); it expects: "
                f"{', '.join(self._prep.feature_order)} (use null for an unknown numeric value)"
            )
        numeric = [self._number(name, item[name]) for name in self._prep.numeric]
        categorical = [self._category(name, item[name]) for name in self._prep.categorical]
        return numeric, categorical

    @staticmethod
    def _number(name: str, value: Any) -> float:
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(
                f"feature {name!r} must be a number or null, got {type(value).__name__} {value!r}"
            )
        if not math.isfinite(value):
            raise InvalidRequest(f"feature {name!r} must be finite, got {value!r}")
        return float(value)

    @staticmethod
    def _category(name: str, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # categories read from CSV are strings: 3 and "3" are one
        raise InvalidRequest(
            f"feature {name!r} is categorical: give a string or null, got "
            f"{type(value).__name__} {value!r}"
        )

    def predict(self, items: list[Row]) -> list[dict[str, Any]]:
        if not items:
            return []
        numeric = np.asarray([row[0] for row in items], dtype=np.float64)
        numeric = numeric.reshape(len(items), len(self._prep.numeric))
        categorical = np.empty((len(items), len(self._prep.categorical)), dtype=object)
        for i, row in enumerate(items):
            categorical[i, :] = row[1]
        features = torch.from_numpy(self._prep.transform(numeric, categorical))
        with torch.inference_mode():
            logits = self._net(features)
        return scores_from_logits(logits, self._prep.labels)

    def describe(self) -> dict[str, Any]:
        kinds = {name: "number" for name in self._prep.numeric}
        kinds.update({name: "category" for name in self._prep.categorical})
        return {
            "kind": KIND,
            "labels": list(self._prep.labels),
            "features": {name: kinds[name] for name in self._prep.feature_order},
        }


def load(directory: Path, manifest: dict[str, Any], threads: int) -> TabularPredictor:
    torch.set_num_threads(threads)
    config = json.loads((directory / "config.json").read_text())
    preprocessing = TabularPreprocessing.from_json(
        json.loads((directory / "preprocessing.json").read_text())
    )
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    ignored = [name for name in (config.get("target"), config.get("group")) if name]
    return TabularPredictor(preprocessing, build_module(config, state), ignored)
