"""An exported text classifier served by its predictor answers exactly as the recipe,
and refuses inputs it cannot answer honestly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from modelmint.errors import InvalidRequest
from modelmint.serving.predictors import load_predictor
from modelmint.serving.predictors.text import TextPredictor
from modelmint.serving.predictors.torch_state import quantize
from modelmint.training.recipe import Splits
from modelmint.training.recipes.text import TextClassifier, TextData
from tests.unit.training.test_text import intents, write_jsonl

pytestmark = pytest.mark.slow  # loads and trains the MiniLM encoder


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextClassifier, Splits[TextData]]:
    path = write_jsonl(tmp_path_factory.mktemp("intents") / "intents.jsonl", intents(20))
    recipe = TextClassifier(max_length=32, epochs=2, freeze_encoder=True, seed=0)
    splits = recipe.split(recipe.load_data(str(path)))
    return recipe.fit(splits.train, splits.val), splits


def served_scores(
    predictor: TextPredictor, texts: tuple[str, ...], labels: tuple[str, ...]
) -> np.ndarray:
    results = predictor.predict([predictor.validate(text) for text in texts])
    for result in results:
        assert sum(result["scores"].values()) == pytest.approx(1.0)
        assert result["label"] == max(result["scores"], key=result["scores"].get)
    return np.array([[r["scores"][label] for label in labels] for r in results])


def test_exported_predictor_matches_the_recipe(
    trained: tuple[TextClassifier, Splits[TextData]], tmp_path: Path
) -> None:
    recipe, splits = trained
    exported = recipe.export(tmp_path)

    predictor = load_predictor(tmp_path, threads=1)

    assert isinstance(predictor, TextPredictor) and predictor.task == "classification"
    assert json.loads((tmp_path / "manifest.json").read_text())["kind"] == "text-classifier"
    assert all((tmp_path / name).is_file() for name in exported.files)
    served = served_scores(predictor, splits.test.texts, recipe.labels_)
    assert served == pytest.approx(recipe.predict_proba(splits.test), abs=1e-5)
    results = predictor.predict([predictor.validate(splits.test.texts[0])])
    assert json.loads(json.dumps(results)) == results
    assert predictor.describe() == {
        "kind": "text-classifier",
        "labels": ["billing", "login", "shipping"],
        "max_tokens": 32,
    }


def test_validate_refuses_empty_long_and_non_text(
    trained: tuple[TextClassifier, Splits[TextData]], tmp_path: Path
) -> None:
    recipe, _ = trained
    recipe.export(tmp_path)
    predictor = load_predictor(tmp_path, threads=1)

    assert predictor.validate("where is my parcel")
    for empty in ("", "   \n"):
        with pytest.raises(InvalidRequest, match="empty"):
            predictor.validate(empty)
    with pytest.raises(
        InvalidRequest, match=r"has \d+ tokens; this model takes at most 32"
    ) as info:
        predictor.validate("my order " * 40)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequest, match="must be a string"):
        predictor.validate({"text": "hi"})


def test_a_quantized_export_serves_the_quantized_predictions(
    trained: tuple[TextClassifier, Splits[TextData]], tmp_path: Path
) -> None:
    recipe, splits = trained
    fitted = TextClassifier(**recipe.get_params()).fit(splits.train, splits.val)
    fitted.use_module(quantize(fitted.torch_module()))

    exported = fitted.export(tmp_path)
    predictor = load_predictor(tmp_path, threads=1)

    assert exported.serving["quantization"] == "dynamic-int8"
    assert isinstance(predictor, TextPredictor)
    (tmp_path / "float").mkdir()
    recipe.export(tmp_path / "float")
    float_size = (tmp_path / "float" / "weights.pt").stat().st_size
    # int8 Linear layers; the word embeddings (half the float weights) stay float32.
    assert (tmp_path / "weights.pt").stat().st_size < 0.75 * float_size
    served = served_scores(predictor, splits.test.texts, fitted.labels_)
    assert served == pytest.approx(fitted.predict_proba(splits.test), abs=1e-5)
