"""The text-classifier recipe: data checks on CSV/JSONL, and real fine-tuning of the
bundled MiniLM encoder on a small generated set of customer-service intents."""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelmint.training.recipe import DataError, Splits
from modelmint.training.recipes.text import TextClassifier, TextData, read_texts

TEMPLATES = {
    "billing": [
        "I was charged twice for my {x}",
        "my invoice for the {x} looks wrong",
        "why did my card get billed for the {x}",
        "I want a refund for the {x}",
        "the price of my {x} went up without notice",
    ],
    "shipping": [
        "where is my {x} package",
        "my {x} order has not arrived yet",
        "the courier lost my {x}",
        "when will the {x} be delivered",
        "tracking for my {x} shows no movement",
    ],
    "login": [
        "I cannot log in to my {x} account",
        "reset the password for my {x} login",
        "my {x} account is locked after too many attempts",
        "the sign in code for {x} never comes",
        "I forgot my {x} username",
    ],
}
THINGS = ["phone", "laptop", "subscription", "headphones", "camera", "printer", "tablet", "watch"]
OPENERS = ["", "hi, ", "hello, ", "please help: ", "quick question: ", "urgent: "]


def intents(per_intent: int = 30, seed: int = 0) -> list[dict[str, str]]:
    """Short support messages of three intents, varied by template, product and opener."""
    rng = random.Random(seed)
    rows = []
    for label, templates in TEMPLATES.items():
        combos = list(itertools.product(templates, THINGS, OPENERS))
        rng.shuffle(combos)
        for template, thing, opener in combos[:per_intent]:
            rows.append({"text": opener + template.format(x=thing), "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # The shared test machine has 2 cores; more threads only wait for them.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- data checks ---------------------------------------------------------------------


def test_reads_csv_and_jsonl_with_configured_names(tmp_path: Path) -> None:
    rows = [{"msg": "hello, where is it", "intent": "shipping"}, {"msg": "refund", "intent": "b"}]
    csv_path = tmp_path / "t.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["msg", "intent"])
        writer.writeheader()
        writer.writerows(rows)
    jsonl_path = write_jsonl(tmp_path / "t.jsonl", rows)

    for path in (csv_path, jsonl_path):
        data = read_texts(path, text_column="msg", label_column="intent")
        assert data.texts == ("hello, where is it", "refund")
        assert data.labels == ("b", "shipping") and data.y.tolist() == [1, 0]


def test_missing_column_or_key_is_named(tmp_path: Path) -> None:
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("body,label\nhi,a\nyo,b\n")
    with pytest.raises(DataError, match=r"no column 'text'; columns found: body, label"):
        read_texts(csv_path)
    jsonl_path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": "x"}, {"text": "b"}])
    with pytest.raises(DataError, match=r"line 2: no key 'label'; keys found: text"):
        read_texts(jsonl_path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "is empty"),
        ("header.csv", "text,label\n", "no labelled texts"),
        ("blank.csv", "text,label\nhi,a\n  ,b\n", r"line 3: 'text' is empty"),
        ("nolabel.jsonl", '{"text": "hi", "label": ""}\n', r"line 1: 'label' is empty"),
        ("bad.jsonl", '{"text": "hi", "label": "a"}\n{oops\n', "line 2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "line 1: expected a JSON object"),
        ("one.csv", "text,label\nhi,a\nyo,a\n", "every text has the label 'a'"),
    ],
)
def test_bad_files_are_refused_with_the_problem_named(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_texts(path)


def test_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [{"text": "a", "label": "x"}, {"text": "a", "label": "x"}, {"text": "a", "label": "y"}]

    data = read_texts(write_jsonl(tmp_path / "d.jsonl", rows))

    assert len(data) == 2 and data.duplicates_dropped == 1
    assert data.summary()["class_counts"] == {"x": 1, "y": 1}
    assert data.summary()["duplicates_dropped"] == 1


# -- training ------------------------------------------------------------------------


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple[int, int, dict[str, float]]] = []
        self.stop_after = stop_after

    def __call__(self, stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        assert stage == "epoch"
        self.calls.append((done, total, dict(metrics)))
        if done == self.stop_after:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def intents_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("intents") / "intents.jsonl", intents())


@pytest.fixture(scope="module")
def fine_tuned(intents_file: Path) -> tuple[TextClassifier, Splits[TextData], Recorder]:
    recipe = TextClassifier(max_length=32, epochs=2, seed=0)
    splits = recipe.split(recipe.load_data(str(intents_file)))
    recorder = Recorder()
    assert recipe.fit(splits.train, splits.val, progress=recorder) is recipe
    return recipe, splits, recorder


@pytest.mark.slow
def test_fine_tuning_learns_the_intents(
    fine_tuned: tuple[TextClassifier, Splits[TextData], Recorder],
) -> None:
    recipe, splits, recorder = fine_tuned

    report = recipe.evaluate(splits.test)

    assert len(splits.test) >= 15
    assert report["accuracy"] >= 0.8  # chance is 1/3
    assert report["f1_macro"] >= 0.75
    assert set(report["per_class"]) == {"billing", "login", "shipping"}
    assert json.loads(json.dumps(report)) == report
    assert [c[0] for c in recorder.calls] == [1, 2]
    assert all({"loss", "f1_macro"} <= set(c[2]) for c in recorder.calls)
    assert recorder.calls[1][2]["loss"] < recorder.calls[0][2]["loss"]


@pytest.mark.slow
def test_torch_module_on_example_inputs_gives_the_recipe_predictions(
    fine_tuned: tuple[TextClassifier, Splits[TextData], Recorder],
) -> None:
    recipe, splits, _ = fine_tuned
    input_ids, attention_mask = recipe.example_inputs()
    first = splits.train.take(np.arange(len(input_ids), dtype=np.int64))

    with torch.inference_mode():
        logits = recipe.torch_module()(input_ids, attention_mask)

    proba = torch.softmax(logits.double(), dim=1).numpy()
    assert proba == pytest.approx(recipe.predict_proba(first), abs=1e-6)


@pytest.mark.slow
def test_frozen_encoder_is_deterministic_and_resumes_after_an_interruption(
    intents_file: Path, tmp_path: Path
) -> None:
    params: dict[str, Any] = {"max_length": 32, "epochs": 3, "freeze_encoder": True, "seed": 4}
    data = TextClassifier(**params).load_data(str(intents_file))
    splits = TextClassifier(**params).split(data)
    first = TextClassifier(**params).fit(splits.train, splits.val).evaluate(splits.test)
    second = TextClassifier(**params).fit(splits.train, splits.val).evaluate(splits.test)

    with pytest.raises(KeyboardInterrupt):
        TextClassifier(**params).fit(
            splits.train, splits.val, progress=Recorder(stop_after=2), checkpoint_dir=tmp_path
        )
    recorder = Recorder()
    resumed = TextClassifier(**params).fit(
        splits.train, splits.val, progress=recorder, checkpoint_dir=tmp_path
    )

    assert first == second
    assert [c[0] for c in recorder.calls] == [3]
    assert resumed.evaluate(splits.test) == first


def test_params_round_trip() -> None:
    recipe = TextClassifier(text_column="msg", freeze_encoder=True, max_length=64)
    assert TextClassifier(**recipe.get_params()).get_params() == recipe.get_params()
    with pytest.raises(DataError, match="no parameter"):
        recipe.set_params(max_tokens=3)


def test_scrub_pii_removes_contact_details_before_training(tmp_path: Path) -> None:
    path = tmp_path / "pii.csv"
    path.write_text(
        "text,label\n"
        "mail me at jane.doe@example.com,contact\n"
        "call +44 20 7946 0958 today,contact\n"
        "the app is slow,tech\n"
    )
    kept = TextClassifier().load_data(str(path))
    scrubbed = TextClassifier(scrub_pii=True).load_data(str(path))
    assert "jane.doe@example.com" in kept.texts[0]
    assert scrubbed.texts[0] == "mail me at [EMAIL]"
    assert "[PHONE]" in scrubbed.texts[1] and "7946" not in scrubbed.texts[1]
    assert scrubbed.texts[2] == "the app is slow"
