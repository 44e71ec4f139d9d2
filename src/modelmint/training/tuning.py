"""Hyperparameter search for any recipe with Optuna, pruning hopeless trials early.

Each trial trains a fresh copy of the recipe with parameters drawn from the recipe
class's ``tuning_space`` and is scored by ``primary_metric`` on the validation data.
The recipe's per-epoch progress reports feed Optuna's median pruner, so a trial that
is worse than the median of earlier trials at the same epoch stops there.

The search is deterministic for a given recipe seed: the TPE sampler is seeded with
it and trials run one after another (a time limit, when given, can only shorten it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import optuna

from modelmint.training.evaluation import flatten_metrics
from modelmint.training.recipe import DataError, Progress, Recipe, SearchSpace, silent

__all__ = ["TrialRecord", "TuneResult", "suggest", "tune"]

D = TypeVar("D")

TrialState = Literal["complete", "pruned", "failed"]


@dataclass(frozen=True, slots=True)
class TrialRecord:
    number: int
    params: dict[str, Any]
    state: TrialState
    # The final score for a complete trial, the last reported epoch score otherwise.
    value: float | None
    # Epochs that reported the metric to the pruner.
    epochs: int


@dataclass(frozen=True, slots=True)
class TuneResult:
    metric: str
    direction: Literal["maximize", "minimize"]
    best_params: dict[str, Any]
    best_value: float
    trials: list[TrialRecord] = field(default_factory=list)

    @property
    def pruned(self) -> int:
        return sum(t.state == "pruned" for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tune(
    recipe: Recipe[D],
    train: D,
    val: D,
    n_trials: int,
    progress: Progress = silent,
    timeout_s: float | None = None,
    *,
    startup_trials: int = 3,
    warmup_epochs: int = 1,
) -> TuneResult:
    """Search ``type(recipe).tuning_space`` for the parameters that score best on ``val``.

    Parameters outside the space keep ``recipe``'s values. ``progress`` gets one
    ``("tune", finished, n_trials, {"value": ..., "best": ...})`` report per trial;
    the trials' own epoch reports are not forwarded (they would restart a bar per trial).
    The median pruner judges no trial before ``startup_trials`` trials have finished, nor
    any trial before its ``warmup_epochs``-th epoch.
    """
    cls = type(recipe)
    _check(cls, n_trials)
    # Read through the instance: a recipe may judge by a different metric per mode.
    direction: Literal["maximize", "minimize"] = (
        "maximize" if recipe.greater_is_better else "minimize"
    )
    objective = _Objective(recipe, train, val, cls.tuning_space)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported via progress
    try:
        study = optuna.create_study(
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=int(getattr(recipe, "seed", 0))),
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs
            ),
        )
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=timeout_s,
            callbacks=[_progress_callback(progress, n_trials)],
        )
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not study.trials:
        raise DataError(f"the tuning time limit of {timeout_s} s ended before any trial started")
    return _result(study, recipe.primary_metric, direction, objective.params)


def _check(cls: type[Recipe[Any]], n_trials: int) -> None:
    if not cls.tuning_space:
        raise DataError(f"recipe {cls.name} has no tuning space: nothing to tune")
    if n_trials < 1:
        raise DataError(f"tuning needs at least one trial; got {n_trials}")
    unknown = sorted(set(cls.tuning_space) - set(cls.param_names()))
    if unknown:
        raise DataError(f"{cls.name}'s tuning space names unknown parameters: {unknown}")


def suggest(trial: optuna.Trial, name: str, spec: tuple[Any, ...]) -> Any:
    """Draw one parameter as a ``SearchSpace`` entry describes it."""
    kind = spec[0] if spec else None
    if kind in ("float", "log", "int") and len(spec) == 3:
        low, high = spec[1], spec[2]
        if kind == "int":
            return trial.suggest_int(name, int(low), int(high))
        return trial.suggest_float(name, float(low), float(high), log=kind == "log")
    if kind == "choice" and len(spec) == 2 and len(spec[1]) > 0:
        values = list(spec[1])
        # Optuna stores only None/bool/int/float/str choices; others (tuples of layer
        # sizes...) are drawn by their JSON text and mapped back.
        labels = [_choice_label(v) for v in values]
        drawn = trial.suggest_categorical(name, labels)
        return values[labels.index(drawn)]
    raise DataError(
        f"bad search space entry {name}={spec!r}: expected ('float'|'log'|'int', low, high) "
        "or ('choice', [values...])"
    )


def _choice_label(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, default=str)


class _Objective:
    """One trial: fit a copy with drawn parameters, prune on epoch reports, score on val."""

    def __init__(self, recipe: Recipe[Any], train: Any, val: Any, space: SearchSpace) -> None:
        self.recipe = recipe
        self.train = train
        self.val = val
        self.space = space
        # Real parameter values by trial number (Optuna keeps only the choice labels).
        self.params: dict[int, dict[str, Any]] = {}

    def __call__(self, trial: optuna.Trial) -> float:
        drawn = {name: suggest(trial, name, spec) for name, spec in self.space.items()}
        self.params[trial.number] = drawn
        candidate = type(self.recipe)(**{**self.recipe.get_params(), **drawn})
        metric = candidate.primary_metric

        def report(stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
            if stage != "epoch" or metric not in metrics:
                return
            value = float(metrics[metric])
            if not math.isfinite(value):
                raise optuna.TrialPruned(f"{metric} is {value} at epoch {done}")
            trial.report(value, done)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{metric}={value:.4g} at epoch {done}")

        candidate.fit(self.train, self.val, progress=report)
        scores = flatten_metrics(candidate.evaluate(self.val))
        if metric not in scores:
            raise DataError(
                f"{candidate.name}.evaluate() reports no numeric {metric!r} to tune for; "
                f"it reports: {', '.join(sorted(scores))}"
            )
        return scores[metric]


def _progress_callback(
    progress: Progress, n_trials: int
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        metrics: dict[str, float] = {}
        if trial.value is not None:
            metrics["value"] = float(trial.value)
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if completed:
            metrics["best"] = float(study.best_value)
        progress("tune", len(study.trials), n_trials, metrics)

    return callback


def _result(
    study: optuna.Study,
    metric: str,
    direction: Literal["maximize", "minimize"],
    params: dict[int, dict[str, Any]],
) -> TuneResult:
    records = [_record(t, params.get(t.number, dict(t.params))) for t in study.trials]
    if not any(r.state == "complete" for r in records):
        raise DataError(
            f"no tuning trial completed ({len(records)} pruned or failed); "
            "try more trials or a wider search space"
        )
    best = study.best_trial
    return TuneResult(
        metric=metric,
        direction=direction,
        best_params=params.get(best.number, dict(best.params)),
        best_value=float(study.best_value),
        trials=records,
    )


def _record(trial: optuna.trial.FrozenTrial, params: dict[str, Any]) -> TrialRecord:
    state: TrialState
    if trial.state == optuna.trial.TrialState.COMPLETE:
        state, value = "complete", trial.value
    elif trial.state == optuna.trial.TrialState.PRUNED:
        state = "pruned"
        steps = trial.intermediate_values
        value = steps[max(steps)] if steps else None
    else:
        state, value = "failed", None
    return TrialRecord(
        number=trial.number,
        params=params,
        state=state,
        value=float(value) if value is not None else None,
        epochs=len(trial.intermediate_values),
    )
