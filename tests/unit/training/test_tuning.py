"""Optuna tuning over any recipe: drawn parameters, pruning from epoch reports,
direction, determinism, and a quiet log."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import optuna
import pytest
import torch

from modelmint.training.recipe import DataError, SearchSpace
from modelmint.training.tuning import suggest, tune
from tests.unit.training.test_evaluation import LogisticRecipe, Table, breast_cancer


class LossRecipe(LogisticRecipe):
    """Judged by log loss, which should go down."""

    primary_metric: ClassVar[str] = "log_loss"
    greater_is_better: ClassVar[bool] = False


class ShapeRecipe(LogisticRecipe):
    """A space with an int, a choice and a plain float range."""

    tuning_space: ClassVar[SearchSpace] = {
        "epochs": ("int", 2, 6),
        "hidden": ("choice", [0, 4]),
        "weight_decay": ("float", 0.0, 0.01),
    }


class NoSpaceRecipe(LogisticRecipe):
    tuning_space: ClassVar[SearchSpace] = {}


class BadSpaceRecipe(LogisticRecipe):
    tuning_space: ClassVar[SearchSpace] = {"momentum": ("float", 0.0, 0.9)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These networks are tiny: on a shared 2-core machine torch's second thread only
    # spins and contends (10x slower measured), so the module runs single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits() -> tuple[Table, Table]:
    recipe = LogisticRecipe()
    parts = recipe.split(breast_cancer())
    return parts.train, parts.val


def test_tune_finds_the_best_completed_trial(splits: tuple[Table, Table]) -> None:
    train, val = splits
    result = tune(LogisticRecipe(epochs=8, seed=0), train, val, n_trials=8)
    assert result.metric == "accuracy"
    assert result.direction == "maximize"
    assert len(result.trials) == 8
    complete = [t for t in result.trials if t.state == "complete"]
    assert complete
    assert result.best_value == max(t.value for t in complete if t.value is not None)
    best = next(t for t in complete if t.value == result.best_value)
    assert result.best_params == best.params
    assert set(result.best_params) == {"lr", "weight_decay"}
    assert 1e-5 <= result.best_params["lr"] <= 1.0
    # Refitting with the best parameters reproduces the best trial's score.
    refit = LogisticRecipe(epochs=8, seed=0, **result.best_params).fit(train, val)
    assert refit.evaluate(val)["accuracy"] == result.best_value


def test_hopeless_trials_are_pruned_from_epoch_reports(splits: tuple[Table, Table]) -> None:
    train, val = splits
    # lr spans five decades: trials drawn near 1e-5 barely move from their start and
    # fall below the median of earlier trials at the same epoch.
    result = tune(LogisticRecipe(epochs=10, seed=1), train, val, n_trials=12)
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert pruned, [(t.params, t.value) for t in result.trials]
    assert result.pruned == len(pruned)
    for trial in pruned:
        assert 1 <= trial.epochs < 10
    for trial in result.trials:
        if trial.state == "complete":
            assert trial.epochs == 10


def test_lower_is_better_metrics_are_minimised(splits: tuple[Table, Table]) -> None:
    train, val = splits
    result = tune(LossRecipe(epochs=5, seed=2), train, val, n_trials=6)
    assert result.direction == "minimize"
    values = [t.value for t in result.trials if t.state == "complete" and t.value is not None]
    assert result.best_value == min(values)


def test_tuning_is_deterministic_for_a_seed(splits: tuple[Table, Table]) -> None:
    train, val = splits
    first = tune(LogisticRecipe(epochs=4, seed=5), train, val, n_trials=5)
    again = tune(LogisticRecipe(epochs=4, seed=5), train, val, n_trials=5)
    other = tune(LogisticRecipe(epochs=4, seed=6), train, val, n_trials=5)
    assert first == again
    assert [t.params for t in first.trials] != [t.params for t in other.trials]


def test_int_and_choice_spaces_give_real_values_and_keep_other_params(
    splits: tuple[Table, Table],
) -> None:
    train, val = splits
    seen: list[tuple[str, int, int]] = []

    def record(stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        seen.append((stage, done, total))

    result = tune(ShapeRecipe(lr=0.3, seed=3), train, val, n_trials=4, progress=record)
    for trial in result.trials:
        assert isinstance(trial.params["epochs"], int)
        assert 2 <= trial.params["epochs"] <= 6
        assert trial.params["hidden"] in (0, 4)
        assert 0.0 <= trial.params["weight_decay"] <= 0.01
    # Only one report per trial reaches the caller, never the trials' epochs.
    assert seen == [("tune", n, 4) for n in range(1, 5)]


def test_a_time_limit_stops_the_search_early(splits: tuple[Table, Table]) -> None:
    train, val = splits
    result = tune(LogisticRecipe(epochs=3), train, val, n_trials=500, timeout_s=0.5)
    assert 1 <= len(result.trials) < 500


def test_optuna_logs_nothing_and_its_verbosity_is_restored(
    splits: tuple[Table, Table], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    train, val = splits
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        with caplog.at_level(logging.INFO):
            tune(LogisticRecipe(epochs=2), train, val, n_trials=2)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    captured = capfd.readouterr()
    assert "Trial" not in captured.err + captured.out
    assert not [r for r in caplog.records if r.name.startswith("optuna")]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        (NoSpaceRecipe(), "no tuning space"),
        (BadSpaceRecipe(), "momentum"),
    ],
)
def test_recipes_that_cannot_be_tuned_are_data_errors(
    splits: tuple[Table, Table], recipe: LogisticRecipe, message: str
) -> None:
    train, val = splits
    with pytest.raises(DataError, match=message):
        tune(recipe, train, val, n_trials=2)


def test_zero_trials_is_a_data_error(splits: tuple[Table, Table]) -> None:
    with pytest.raises(DataError, match="at least one trial"):
        tune(LogisticRecipe(), *splits, n_trials=0)


@pytest.mark.parametrize(
    "spec", [("float", 0.0), ("uniform", 0, 1), ("choice", []), ("choice",), ()]
)
def test_malformed_space_entries_are_named(spec: tuple[Any, ...]) -> None:
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(DataError, match="bad search space entry width"):
        suggest(trial, "width", spec)


def test_choices_of_lists_are_drawn_and_returned_as_lists() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [suggest(study.ask(), "layers", ("choice", [[64], [64, 32]])) for _ in range(20)]
    assert all(value in ([64], [64, 32]) for value in drawn)
    assert {len(value) for value in drawn} == {1, 2}
