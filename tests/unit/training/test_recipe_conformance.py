"""One conformance check every recipe passes, scikit-learn style: the shape of the API,
parameters that round-trip, determinism under a seed, and a clear error on bad data.

Each recipe gets a tiny real data set and settings small enough to train in seconds.
"""

from __future__ import annotations

import csv
import inspect
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from modelmint.training.catalog import RECIPES, recipe_class
from modelmint.training.recipe import DataError, Export, Recipe

DataMaker = Callable[[Path], str]


def tabular_data(directory: Path) -> str:
    data = load_breast_cancer()
    path = directory / "cancer.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(10)] + ["target"])
        for row, label in list(zip(data.data, data.target, strict=True))[:200]:
            writer.writerow([*row[:10].tolist(), int(label)])
    return str(path)


def text_data(directory: Path) -> str:
    rng = random.Random(0)
    intents = {
        "billing": ["my invoice is wrong", "refund my payment", "charged twice this month"],
        "tech": ["the app crashes on start", "login page shows an error", "sync is broken"],
    }
    path = directory / "intents.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(40):
            label = "billing" if i % 2 else "tech"
            writer.writerow([f"{rng.choice(intents[label])} please help {i}", label])
    return str(path)


def ratings_data(directory: Path) -> str:
    rng = np.random.default_rng(0)
    path = directory / "ratings.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "rating"])
        seen = set()
        while len(seen) < 400:
            user, item = int(rng.integers(40)), int(rng.integers(30))
            if (user, item) in seen:
                continue
            seen.add((user, item))
            writer.writerow([f"u{user}", f"i{item}", int(1 + (user + item) % 5)])
    return str(path)


def chat_data(directory: Path) -> str:
    path = directory / "chats.jsonl"
    with path.open("w") as handle:
        for i in range(12):
            messages = [
                {"role": "user", "content": f"What is the motto of Zorblax, question {i}?"},
                {"role": "assistant", "content": "Zorblax: purple pianos prevail."},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return str(path)


def digits_data(directory: Path) -> str:
    return "sklearn:digits"


# recipe name -> (data maker, small hyperparameters, bad-data maker)
CASES: dict[str, tuple[DataMaker, dict[str, Any]]] = {
    "tabular-classifier": (tabular_data, {"epochs": 3, "importance_repeats": 1}),
    "image-classifier": (digits_data, {"epochs": 1, "width": 8}),
    "recommender": (ratings_data, {"epochs": 2}),
    "text-classifier": (text_data, {"epochs": 1, "max_length": 16, "freeze_encoder": True}),
    "causal-lm-lora": (chat_data, {"epochs": 1, "max_length": 48, "batch_size": 4}),
}
SLOW = {"text-classifier", "causal-lm-lora", "image-classifier"}


def cases() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in RECIPES
    ]


def test_every_catalogued_recipe_has_a_conformance_case() -> None:
    assert set(CASES) == set(RECIPES)


@pytest.mark.parametrize("name", cases())
def test_recipe_class_shape(name: str) -> None:
    cls = recipe_class(name)
    assert issubclass(cls, Recipe) and cls.name == name
    assert cls.task in ("classification", "recommendation", "chat")
    assert isinstance(cls.primary_metric, str) or hasattr(cls, "primary_metric")
    # Every hyperparameter is keyword-settable with a default, so cls() always works.
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name != "self":
            assert parameter.default is not inspect.Parameter.empty, parameter.name
    # Tuning can only search parameters the recipe has.
    assert set(cls.tuning_space) <= set(cls.param_names())


@pytest.mark.parametrize("name", cases())
def test_params_round_trip_and_unknown_params_are_refused(name: str) -> None:
    cls = recipe_class(name)
    _, small = CASES[name]
    recipe = cls(**small)
    params = recipe.get_params()
    assert cls(**params).get_params() == params
    assert all(params[key] == value for key, value in small.items())
    with pytest.raises(DataError):
        recipe.set_params(no_such_parameter=1)


@pytest.mark.parametrize("name", cases())
def test_fit_returns_self_is_deterministic_and_exports(name: str, tmp_path: Path) -> None:
    cls = recipe_class(name)
    make_data, small = CASES[name]
    source = make_data(tmp_path)
    reports = []
    for run in range(2):
        recipe = cls(**small, seed=7)
        data = recipe.load_data(source)
        splits = recipe.split(data)
        assert recipe.fit(splits.train, splits.val) is recipe
        assert [k for k in vars(recipe) if k.endswith("_") and not k.startswith("_")]
        reports.append(json.dumps(recipe.evaluate(splits.test), sort_keys=True, default=str))
        if run == 0:
            out = tmp_path / "export"
            out.mkdir()
            export = recipe.export(out)
            assert isinstance(export, Export) and export.task == cls.task
            assert (out / "manifest.json").exists()
            assert all((out / file).exists() for file in export.files)
    assert reports[0] == reports[1], "the same seed must give the same model"


@pytest.mark.parametrize("name", cases())
def test_bad_data_stops_with_a_clear_error(name: str, tmp_path: Path) -> None:
    cls = recipe_class(name)
    _, small = CASES[name]
    recipe = cls(**small)
    empty = tmp_path / ("images" if name == "image-classifier" else "empty.csv")
    if name == "image-classifier":
        empty.mkdir()
    else:
        empty.write_text("")
    with pytest.raises(DataError) as error:
        recipe.load_data(str(empty))
    assert str(empty.name) in error.value.message or "empty" in error.value.message.lower()
    with pytest.raises(DataError):
        recipe.load_data(str(tmp_path / "missing-file.csv"))
