"""The recommender recipe: data checks, learning, cold start, ranking metrics,
determinism, checkpoint resume, TorchBacked and distributed wrapping."""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from modelmint.training import distributed
from modelmint.training.ranking_metrics import ranking_metrics
from modelmint.training.ratings import Ratings
from modelmint.training.recipe import DataError, NotFittedError, Recipe
from modelmint.training.recipes.recommender import Recommender

# Small data trains in well under a second with these.
FAST: dict[str, Any] = {"factors": 8, "epochs": 15, "min_rows": 10}


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def structured_ratings(
    path: Path, *, users: int = 60, items: int = 40, per_user: int = 20, seed: int = 0
) -> Path:
    """Ratings from a rank-3 taste model with biases and a little noise, rounded to 1..5."""
    rng = np.random.default_rng(seed)
    taste_u, taste_i = rng.normal(0, 0.7, (users, 3)), rng.normal(0, 0.7, (items, 3))
    bias_u, bias_i = rng.normal(0, 0.4, users), rng.normal(0, 0.5, items)
    rows: list[list[object]] = []
    for u in range(users):
        for i in rng.choice(items, per_user, replace=False):
            value = 3.2 + bias_u[u] + bias_i[i] + taste_u[u] @ taste_i[i] + rng.normal(0, 0.3)
            rows.append([f"u{u}", f"i{i}", int(np.clip(np.round(value), 1, 5))])
    order = rng.permutation(len(rows))
    return write_csv(path, ["user", "item", "rating"], [rows[k] for k in order])


def two_tastes(path: Path, *, users: int = 60, items: int = 40, seed: int = 0) -> Path:
    """Interactions without ratings: even users choose among the first half of the
    items, odd users among the second half, so popularity alone cannot tell."""
    rng = np.random.default_rng(seed)
    half = items // 2
    rows: list[list[object]] = []
    for u in range(users):
        pool = np.arange(half) if u % 2 == 0 else np.arange(half, items)
        rows += [[f"u{u}", f"i{i}"] for i in rng.choice(pool, 12, replace=False)]
    order = rng.permutation(len(rows))
    return write_csv(path, ["user", "item"], [rows[k] for k in order])


@pytest.fixture
def ratings_file(tmp_path: Path) -> Path:
    return structured_ratings(tmp_path / "ratings.csv")


def fitted(path: Path, **params: Any) -> tuple[Recommender, Ratings, Ratings]:
    recipe = Recommender(**{**FAST, **params})
    splits = recipe.split(recipe.load_data(str(path)))
    return recipe.fit(splits.train, splits.val), splits.train, splits.test


# -- data checks ----------------------------------------------------------------------


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["user", "product", "stars"], [["a", "b", 3]] * 30)
    with pytest.raises(DataError, match=r"no column 'item', 'rating'.*user, product, stars"):
        Recommender().load_data(str(path))


def test_a_file_without_a_header_is_reported_as_missing_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["u1", "i1", "4"], [["u2", "i2", 5]] * 30)
    with pytest.raises(DataError, match="no column 'user', 'item', 'rating'"):
        Recommender().load_data(str(path))


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        Recommender().load_data(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        Recommender().load_data(str(tmp_path / "nope.csv"))


def test_non_numeric_rating_names_its_line(tmp_path: Path) -> None:
    rows: list[list[object]] = [[f"u{i}", f"i{i}", 4] for i in range(30)]
    rows[6][2] = "great"
    path = write_csv(tmp_path / "r.csv", ["user", "item", "rating"], rows)
    # Line 1 is the header, so the seventh row is line 8.
    with pytest.raises(DataError, match=r"line 8: rating 'great' is not a number"):
        Recommender().load_data(str(path))


def test_rating_outside_the_given_scale(tmp_path: Path) -> None:
    rows: list[list[object]] = [[f"u{i}", f"i{i}", 4] for i in range(30)]
    rows[2][2] = 7
    path = write_csv(tmp_path / "r.csv", ["user", "item", "rating"], rows)
    assert len(Recommender().load_data(str(path))) == 30  # no scale given: accepted
    with pytest.raises(DataError, match=r"line 4: rating 7 is outside rating_scale 1\.\.5"):
        Recommender(rating_scale="1,5").load_data(str(path))


def test_too_few_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["user", "item", "rating"], [["u", "i", 3]] * 3)
    with pytest.raises(DataError, match=r"1 rating rows .*2 repeated pairs.*at least 20"):
        Recommender().load_data(str(path))


def test_empty_ids_and_short_lines_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\nu1,i1,3\n,i2,4\n")
    with pytest.raises(DataError, match="line 3: the user id is empty"):
        Recommender(min_rows=1).load_data(str(path))
    path.write_text("user,item,rating\nu1,i1,3\nu2,i2\n")
    with pytest.raises(DataError, match="line 3 has 2 fields; the header has 3"):
        Recommender(min_rows=1).load_data(str(path))


def test_unreadable_bytes_are_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("user,item,rating\nJos\u00e9,i1,3\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.csv is not UTF-8 text"):
        Recommender(min_rows=1).load_data(str(path))
    path.write_text("user,item,rating\nu1,i1,3\nu2," + "i" * 200_000 + ",4\n")
    with pytest.raises(DataError, match="line 3 is not valid CSV: field larger"):
        Recommender(min_rows=1).load_data(str(path))


def test_a_pair_rated_twice_keeps_its_latest_rating(tmp_path: Path) -> None:
    rows: list[list[object]] = [["u1", "i1", 2, 200], ["u2", "i1", 4, 50], ["u1", "i1", 5, 100]]
    path = write_csv(tmp_path / "r.csv", ["user", "item", "rating", "timestamp"], rows)
    data = Recommender(min_rows=1).load_data(str(path))
    assert data.duplicates == 1
    ratings = dict(zip(zip(data.users, data.items, strict=True), data.ratings, strict=True))
    assert ratings == {("u1", "i1"): 2.0, ("u2", "i1"): 4.0}  # timestamp 200 beats 100


def test_explicit_mode_needs_ratings_but_implicit_mode_does_not(tmp_path: Path) -> None:
    path = two_tastes(tmp_path / "clicks.csv")
    with pytest.raises(DataError, match="no column 'rating'"):
        Recommender().load_data(str(path))
    data = Recommender(mode="implicit").load_data(str(path))
    assert len(data) == 720 and not data.has_ratings


@pytest.mark.parametrize(
    "params",
    [{"mode": "hybrid"}, {"rating_scale": "5,1"}, {"rating_scale": "low,high"}, {"factors": 0}],
)
def test_bad_parameters_are_data_errors(ratings_file: Path, params: dict[str, Any]) -> None:
    with pytest.raises(DataError):
        Recommender(**params).load_data(str(ratings_file))


# -- the recipe's shape ---------------------------------------------------------------


def test_fit_returns_self_and_params_round_trip(ratings_file: Path) -> None:
    recipe = Recommender(**FAST, rating_scale="1,5")
    params = recipe.get_params()
    assert Recommender(**params).get_params() == params
    data = recipe.load_data(str(ratings_file))
    assert recipe.fit(data) is recipe
    assert recipe.get_params() == params  # fitting changes no hyperparameter


def test_not_fitted_yet() -> None:
    with pytest.raises(NotFittedError):
        Recommender().evaluate(Ratings("x", np.array(["u"]), np.array(["i"]), np.ones(1)))


def test_the_primary_metric_follows_the_mode() -> None:
    assert (Recommender.primary_metric, Recommender.greater_is_better) == ("rmse", False)
    implicit: Recipe[Ratings] = Recommender(mode="implicit")
    assert (implicit.primary_metric, implicit.greater_is_better) == ("ndcg@10", True)


# -- learning -------------------------------------------------------------------------


def test_learns_ratings_better_than_the_global_mean(ratings_file: Path) -> None:
    recipe, train, test = fitted(ratings_file)
    report = recipe.evaluate(test)
    baseline = math.sqrt(float(np.mean((test.ratings - train.ratings.mean()) ** 2)))
    assert report["rmse"] < 0.8 * baseline
    assert 0 < report["mae"] < report["rmse"]
    assert report["rows"] == len(test)
    for key in ("recall@10", "ndcg@10", "popularity_recall@10", "popularity_ndcg@10"):
        assert 0.0 <= report[key] <= 1.0
    predicted = recipe.predict(test.users, test.items)
    assert predicted.min() >= 1.0 and predicted.max() <= 5.0  # clipped to the seen range


def test_progress_reports_loss_and_the_validation_metric_each_epoch(ratings_file: Path) -> None:
    recipe = Recommender(**FAST)
    splits = recipe.split(recipe.load_data(str(ratings_file)))
    seen: list[tuple[str, int, int, dict[str, float]]] = []
    recipe.fit(
        splits.train,
        splits.val,
        progress=lambda stage, done, total, m: seen.append((stage, done, total, dict(m))),
    )
    assert [(s[0], s[1], s[2]) for s in seen] == [("epoch", e, 15) for e in range(1, 16)]
    assert all(set(m) == {"loss", "rmse"} for *_, m in seen)
    assert seen[-1][3]["loss"] < seen[0][3]["loss"]


def test_same_seed_same_report_other_seed_other_model(ratings_file: Path) -> None:
    first, _, test = fitted(ratings_file, seed=3)
    second, _, _ = fitted(ratings_file, seed=3)
    assert first.evaluate(test) == second.evaluate(test)
    other, _, other_test = fitted(ratings_file, seed=4)
    assert other.evaluate(other_test) != first.evaluate(test)


def test_implicit_mode_ranks_by_taste_where_popularity_cannot(tmp_path: Path) -> None:
    recipe, _, test = fitted(two_tastes(tmp_path / "clicks.csv"), mode="implicit", epochs=30)
    report = recipe.evaluate(test)
    assert "rmse" not in report
    assert report["recall@10"] > report["popularity_recall@10"] + 0.2
    assert report["ndcg@10"] > report["popularity_ndcg@10"] + 0.2


def test_ranking_metrics_by_hand() -> None:
    # User 0: relevant {3, 7}, ranked 3 first and 7 third: recall 2/2,
    # DCG = 1 + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3).
    # User 1: relevant {9} plus one item unknown to training (total 2), nothing hit.
    ranked = [np.array([3, 5, 7]), np.array([1, 2])]
    recall, ndcg = ranking_metrics(ranked, [{3, 7}, {9}], np.array([2, 2]), 10)
    assert recall == pytest.approx((1.0 + 0.0) / 2)
    assert ndcg == pytest.approx((1.5 / (1 + 1 / math.log2(3)) + 0.0) / 2)


# -- cold start -----------------------------------------------------------------------


def test_cold_start_users_and_items(ratings_file: Path, tmp_path: Path) -> None:
    recipe, train, _ = fitted(ratings_file)
    ranker = recipe.ranker()
    user, item = str(recipe.users_[0]), str(recipe.items_[0])
    mean = ranker.global_mean
    predicted = recipe.predict(["stranger", user, "stranger"], [item, "new-item", "new-item"])
    assert predicted == pytest.approx(
        [mean + ranker.item_bias[0], mean + ranker.user_bias[0], mean], abs=1e-5
    )
    # An unknown user gets the most popular items, most rated first.
    counts: dict[str, int] = {}
    for name in train.items.tolist():
        counts[name] = counts.get(name, 0) + 1
    top = [entry["item"] for entry in recipe.recommend("stranger", k=5)]
    expected = sorted(counts, key=lambda name: (-counts[name], recipe.items_.tolist().index(name)))
    assert top == expected[:5]
    users = np.array(["stranger", user, user])
    items = np.array([item, "new-item", item])
    report = recipe.evaluate(Ratings("held-out", users, items, np.array([4.0, 3.0, 5.0])))
    assert report["cold_start_rows"] == 2
    assert (report["cold_start_users"], report["cold_start_items"]) == (1, 1)


def test_recommendations_leave_out_rated_and_excluded_items(ratings_file: Path) -> None:
    recipe, train, _ = fitted(ratings_file)
    user = str(train.users[0])
    rated = set(train.items[train.users == user].tolist())
    first = recipe.recommend(user, k=5)
    assert len(first) == 5 and not rated & {e["item"] for e in first}
    scores = [e["score"] for e in first]
    assert scores == sorted(scores, reverse=True)
    again = recipe.recommend(user, k=5, exclude=[first[0]["item"], "no-such-item"])
    assert [e["item"] for e in again[:4]] == [e["item"] for e in first[1:]]
    everything = recipe.recommend(user, k=100)
    assert len(everything) == len(recipe.items_) - len(rated)


# -- ids and pairs --------------------------------------------------------------------


def test_predict_refuses_users_and_items_of_unequal_length(ratings_file: Path) -> None:
    recipe, train, _ = fitted(ratings_file)
    user, items = str(train.users[0]), train.items[:3].tolist()
    with pytest.raises(ValueError, match="got 1 users and 3 items"):
        recipe.predict([user], items)
    with pytest.raises(ValueError, match="sequence of ids"):
        recipe.predict(user, items[:1])  # type: ignore[arg-type]


def test_numeric_ids_are_the_ids_the_file_spells(tmp_path: Path) -> None:
    rows = [[u, i, 1 + (u * i) % 5] for u in range(190, 200) for i in range(1, 9)]
    recipe = Recommender(**FAST).fit(
        Recommender(**FAST).load_data(
            str(write_csv(tmp_path / "r.csv", ["user", "item", "rating"], rows))
        )
    )
    by_text = recipe.predict(["196", "197"], ["3", "5"])
    # Floats, as pandas reads an id column with a gap in it, and ints: the same users.
    assert recipe.predict([196.0, np.float64(197.0)], [3, np.int64(5)]).tolist() == by_text.tolist()
    assert recipe.predict(np.array([196.0, 197.0]), np.array([3, 5])).tolist() == by_text.tolist()
    assert recipe.recommend(196.0, k=3) == recipe.recommend("196", k=3)
    stranger = recipe.predict(["a-new-user"], ["3"])
    assert recipe.predict(["196"], ["3"]) != stranger  # 196 is known, not cold-start
    with pytest.raises(ValueError, match="not an id"):
        recipe.predict([float("nan")], ["3"])
    # A file that spells its ids "196.0" keeps that spelling.
    spelled = [[f"{u}.0", i, r] for u, i, r in rows]
    other = Recommender(**FAST).fit(
        Recommender(**FAST).load_data(
            str(write_csv(tmp_path / "f.csv", ["user", "item", "rating"], spelled))
        )
    )
    assert other.recommend(196.0, k=3) == other.recommend("196.0", k=3)
    assert other.predict([196.0], ["3"]).tolist() == other.predict(["196.0"], ["3"]).tolist()


# -- refit on training + validation rows ------------------------------------------------


def with_newcomers(path: Path, newcomers: int = 40) -> Path:
    """``structured_ratings`` plus users with one rating each: some land only in the
    validation rows of a split."""
    structured_ratings(path)
    with path.open("a", newline="") as handle:
        csv.writer(handle).writerows([[f"new{n}", f"i{n % 40}", 4] for n in range(newcomers)])
    return path


def only_in(part: Ratings, *others: Ratings) -> list[str]:
    elsewhere = {str(u) for other in others for u in other.users.tolist()}
    return sorted({str(u) for u in part.users.tolist()} - elsewhere)


def test_refit_learns_the_validation_rows_for_the_epochs_validation_chose(
    tmp_path: Path,
) -> None:
    path = with_newcomers(tmp_path / "ratings.csv")
    recipe = Recommender(**FAST, patience=2)
    splits = recipe.split(recipe.load_data(str(path)))
    newcomers = only_in(splits.val, splits.train, splits.test)
    assert newcomers  # the data is made so that some users are only validated on
    recipe.fit(splits.train, splits.val)
    chosen, history = recipe.best_epoch_, recipe.history_
    assert newcomers[0] not in recipe.users_.tolist()
    seen: list[tuple[str, int, int]] = []
    recipe.refit(
        splits.train, splits.val, progress=lambda stage, d, t, m: seen.append((stage, d, t))
    )
    assert newcomers[0] in recipe.users_.tolist()
    assert seen == [("refit", e, chosen) for e in range(1, chosen + 1)]
    assert recipe.history_ == history  # the validated run's, for the report
    report = recipe.evaluate(splits.test)
    assert (report["epochs_trained"], report["best_epoch"]) == (chosen, chosen)
    assert report["refit_rows"] == len(splits.train) + len(splits.val)
    assert recipe.recommend(newcomers[0], k=3)  # known: its rated item is left out
    assert recipe.refit(splits.train, None) is recipe  # nothing to add: unchanged


@pytest.mark.parametrize("tune", [0, 2])
def test_modelmint_train_refits_on_the_validation_rows(tmp_path: Path, tune: int) -> None:
    from modelmint.serving.predictors import load_predictor
    from modelmint.training.runs import TrainRequest, train

    path = with_newcomers(tmp_path / "ratings.csv")
    params = {**FAST, "patience": 2}
    result = train(
        TrainRequest("recommender", str(path), params=params, register=False, tune=tune),
        home=tmp_path / "home",
        database=None,
    )
    assert result.artifact_dir is not None
    recipe = Recommender(**result.report.params)
    splits = recipe.split(recipe.load_data(str(path)))
    newcomer = only_in(splits.val, splits.train, splits.test)[0]
    predictor = load_predictor(result.artifact_dir)
    [answer] = predictor.predict([predictor.validate({"user": newcomer, "k": 3})])
    assert answer["cold_start"] is False
    metrics = result.report.metrics
    # The epochs chosen on validation (with the tuned parameters) are the ones trained.
    chosen = recipe.fit(splits.train, splits.val).best_epoch_
    assert metrics["best_epoch"] == metrics["epochs_trained"] == chosen
    assert metrics["refit_rows"] == len(splits.train) + len(splits.val)
    config = json.loads((result.artifact_dir / "config.json").read_text())
    assert (config["epochs_trained"], config["refit_rows"]) == (chosen, metrics["refit_rows"])


# -- checkpoints, TorchBacked, distributed ----------------------------------------------


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_where_it_stopped(ratings_file: Path, tmp_path: Path) -> None:
    recipe = Recommender(**FAST)
    splits = recipe.split(recipe.load_data(str(ratings_file)))
    reference = Recommender(**FAST).fit(splits.train, splits.val)

    def stop_after_two(stage: str, epoch: int, total: int, metrics: Mapping[str, float]) -> None:
        if epoch == 2:
            raise Interrupted

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupted):
        recipe.fit(splits.train, splits.val, progress=stop_after_two, checkpoint_dir=checkpoints)
    epochs: list[int] = []
    resumed = Recommender(**FAST).fit(
        splits.train,
        splits.val,
        progress=lambda stage, epoch, total, metrics: epochs.append(epoch),
        checkpoint_dir=checkpoints,
    )
    assert epochs[0] == 3
    assert resumed.evaluate(splits.test) == reference.evaluate(splits.test)
    assert resumed.history_ == reference.history_


def test_torch_module_gives_the_predictions(ratings_file: Path) -> None:
    recipe, _, test = fitted(ratings_file)
    users, items = recipe.example_inputs()
    with torch.inference_mode():
        out = recipe.torch_module()(users, items).numpy()
    names_u, names_i = recipe.users_[users.numpy()], recipe.items_[items.numpy()]
    assert out == pytest.approx(recipe.predict(names_u, names_i, clip=False), abs=1e-5)
    # Swapping the module (as compression does) changes what evaluate measures.
    before = recipe.evaluate(test)["rmse"]
    module = copy.deepcopy(recipe.torch_module())
    with torch.no_grad():
        module.user_factors.weight.zero_()  # type: ignore[union-attr, operator]
    recipe.use_module(module)
    assert recipe.torch_module() is module
    assert recipe.evaluate(test)["rmse"] != before


@pytest.mark.parametrize("mode", ["explicit", "implicit"])
def test_fit_under_distributed_data_parallel_matches_one_process(
    ratings_file: Path, tmp_path: Path, mode: str
) -> None:
    recipe = Recommender(**FAST, mode=mode)
    splits = recipe.split(recipe.load_data(str(ratings_file)))
    alone = recipe.fit(splits.train, splits.val).evaluate(splits.test)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1
    )
    try:
        assert isinstance(distributed.wrap(torch.nn.Linear(1, 1)), DistributedDataParallel)
        wrapped = Recommender(**FAST, mode=mode).fit(splits.train, splits.val)
    finally:
        dist.destroy_process_group()
    assert wrapped.evaluate(splits.test) == pytest.approx(alone)
