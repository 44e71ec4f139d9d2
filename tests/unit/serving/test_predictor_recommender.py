"""Serving an exported recommender: request validation, parity with the recipe,
exclusions, cold start, and the ranker's exact tie order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelmint.errors import InvalidRequest
from modelmint.serving.predictors import Predictor, load_predictor
from modelmint.serving.predictors.recommender import Query, Ranker
from modelmint.training.ratings import Ratings
from modelmint.training.recipes.recommender import Recommender


def ratings(users: int = 50, items: int = 30, per_user: int = 12) -> Ratings:
    rng = np.random.default_rng(1)
    taste_u, taste_i = rng.normal(0, 0.8, (users, 2)), rng.normal(0, 0.8, (items, 2))
    rows = [(u, i) for u in range(users) for i in rng.choice(items, per_user, replace=False)]
    values = [np.clip(np.round(3 + taste_u[u] @ taste_i[i]), 1, 5) for u, i in rows]
    return Ratings(
        "generated",
        np.array([f"u{u}" for u, _ in rows]),
        np.array([f"i{i}" for _, i in rows]),
        np.array(values, dtype=np.float64),
    )


@pytest.fixture(scope="module", params=["explicit", "implicit"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Recommender, Predictor, Ratings]:
    data = ratings()
    recipe = Recommender(mode=request.param, factors=8, epochs=10).fit(data)
    directory = tmp_path_factory.mktemp(f"recommender-{request.param}")
    recipe.export(directory)
    recipe.exported_to = directory  # type: ignore[attr-defined]
    return recipe, load_predictor(directory), data


def ask(predictor: Predictor, *items: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = predictor.predict([predictor.validate(i) for i in items])
    return results


def test_the_export_is_described_by_its_manifest(
    served: tuple[Recommender, Predictor, Ratings],
) -> None:
    recipe, predictor, _ = served
    directory = Path(recipe.exported_to)  # type: ignore[attr-defined]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert (manifest["kind"], manifest["task"]) == ("recommender", "recommendation")
    assert all((directory / name).is_file() for name in manifest["files"])
    with np.load(directory / "model.npz") as arrays:
        assert arrays["popular"][0] == int(np.argmax(recipe.item_counts_))
    assert predictor.task == "recommendation"
    facts = predictor.describe()
    assert facts["users"] == len(recipe.users_) and facts["items"] == len(recipe.items_)
    assert (facts["max_k"], facts["default_k"], facts["mode"]) == (100, 10, recipe.mode)


def test_served_recommendations_match_the_recipe(
    served: tuple[Recommender, Predictor, Ratings],
) -> None:
    recipe, predictor, _ = served
    users = ["u0", "u7", "u31", "nobody"]
    results = ask(
        predictor,
        *({"user": user, "k": 7, "exclude": ["i3", "i4"]} for user in users),
        {"user": "u2"},
    )
    for user, result in zip(users, results, strict=False):
        expected = recipe.recommend(user, k=7, exclude=["i3", "i4"])
        assert result["items"] == expected  # same items, same scores, same order
        assert result["user"] == user and result["cold_start"] == (user == "nobody")
    assert (
        results[-1]["items"] == ask(predictor, {"user": "u2", "k": 10, "exclude": []})[0]["items"]
    )
    assert len(results[-1]["items"]) == 10


def test_rated_and_excluded_items_are_never_served(
    served: tuple[Recommender, Predictor, Ratings],
) -> None:
    _, predictor, data = served
    rated = set(data.items[data.users == "u5"].tolist())
    first = ask(predictor, {"user": "u5", "k": 100})[0]["items"]
    assert len(first) == 30 - len(rated)
    assert not rated & {entry["item"] for entry in first}
    excluded = [entry["item"] for entry in first[:3]] + ["not-an-item"]
    second = ask(predictor, {"user": "u5", "k": 5, "exclude": excluded})[0]["items"]
    assert [entry["item"] for entry in second] == [entry["item"] for entry in first[3:8]]
    scores = [entry["score"] for entry in first]
    assert scores == sorted(scores, reverse=True)


def test_an_unknown_user_gets_popular_items_scored_in_their_order(
    served: tuple[Recommender, Predictor, Ratings],
) -> None:
    recipe, predictor, data = served
    result = ask(predictor, {"user": "someone-new", "k": 20})[0]
    counts = {item: int((data.items == item).sum()) for item in set(data.items.tolist())}
    popular = sorted(counts, key=lambda item: (-counts[item], recipe.items_.tolist().index(item)))
    assert result["cold_start"] is True
    assert [entry["item"] for entry in result["items"]] == popular[:20]
    # The score is what ranked them, in either mode: the share of users who rated the
    # item, so it never rises down the list.
    scores = [entry["score"] for entry in result["items"]]
    assert scores == pytest.approx([counts[item] / 50 for item in popular[:20]])
    assert scores == sorted(scores, reverse=True)


def test_results_are_json(served: tuple[Recommender, Predictor, Ratings]) -> None:
    _, predictor, _ = served
    results = ask(predictor, {"user": "u1", "k": 2}, {"user": "ghost", "k": 2})
    assert json.loads(json.dumps(results)) == results


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("u1", "must be an object"),
        ({"k": 3}, "user is required"),
        ({"user": ""}, "user must be a non-empty string"),
        ({"user": ["u1"]}, "user must be a non-empty string"),
        ({"user": "u1", "k": 0}, "k must be an integer from 1 to 100"),
        ({"user": "u1", "k": 101}, "k must be an integer from 1 to 100"),
        ({"user": "u1", "k": "5"}, "k must be an integer"),
        ({"user": "u1", "k": True}, "k must be an integer"),
        ({"user": "u1", "k": 2.5}, "k must be an integer"),
        ({"user": "u1", "exclude": "i1"}, "exclude must be a list"),
        ({"user": "u1", "exclude": [{"id": "i1"}]}, "each excluded item must be"),
        ({"user": "u1", "excludes": ["i1"]}, "unknown field 'excludes'"),
    ],
)
def test_bad_requests_are_refused(
    served: tuple[Recommender, Predictor, Ratings], item: Any, problem: str
) -> None:
    _, predictor, _ = served
    with pytest.raises(InvalidRequest, match=problem):
        predictor.validate(item)


def test_validation_fills_defaults_and_accepts_numeric_ids(
    served: tuple[Recommender, Predictor, Ratings],
) -> None:
    _, predictor, _ = served
    assert predictor.validate({"user": "u1"}) == Query("u1", 10, ())
    assert predictor.validate({"user": 7, "k": 100, "exclude": [3, "i4"]}) == Query(
        "7", 100, ("3", "i4")
    )


def test_ties_keep_index_order_whatever_k() -> None:
    # Three known items with equal scores and one better: ranking must not depend
    # on how many items were asked for (a batch asks for its largest k).
    ranker = Ranker(
        user_factors=np.zeros((1, 2), dtype=np.float32),
        item_factors=np.zeros((5, 2), dtype=np.float32),
        user_bias=np.zeros(1, dtype=np.float32),
        item_bias=np.array([0.0, 0.0, 1.0, 0.0, 0.0], dtype=np.float32),
        global_mean=3.0,
        item_counts=np.array([2, 5, 5, 1, 5]),
        seen_indptr=np.array([0, 1]),
        seen_indices=np.array([3], dtype=np.int32),
        score_range=(1.0, 5.0),
    )
    users = np.array([0, -1])
    for k in range(1, 6):
        known, cold = ranker.top(users, k)
        assert known[0].tolist() == [2, 0, 1, 4][:k]  # item 3 was rated in training
        assert cold[0].tolist() == [1, 2, 4, 0, 3][:k]  # by count, ties by index
        assert cold[1].tolist() == [5.0, 5.0, 5.0, 2.0, 1.0][:k]  # counts of one user
