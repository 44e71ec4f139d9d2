"""The ``recommender`` recipe: matrix factorisation with biases, trained in torch.

    modelmint train recommender --data ratings.csv
    modelmint train recommender --data clicks.csv --param mode=implicit

Explicit mode (``user,item,rating[,timestamp]``) learns
``rating ~ global mean + user bias + item bias + user . item`` by minimising the
squared error, and reports RMSE/MAE on held-out rows plus Recall@10/NDCG@10 of the
top-10 items it would recommend. Implicit mode (the rating column is optional:
every row is an interaction) learns the same model with BPR, a pairwise loss that
ranks each chosen item above a random unchosen one, and reports Recall@10/NDCG@10.

Cold start: a user unseen in training is predicted ``global mean + item bias`` and
gets the most popular items, scored by popularity (``Ranker``); an item unseen in
training is predicted ``global mean + user bias`` and is never recommended. The
report counts those rows.

Validation, then refit: ``fit(train, val)`` stops early on the validation metric
and keeps the best epoch; ``refit(train, val)`` (which ``modelmint train`` runs
next) trains afresh on both for that many epochs, on the same learning-rate
schedule, so the model served has learnt from every row but the test ones and a
user met only in the validation rows is no longer cold-start. On data shaped like
bench/recommender.py's the refit lowered test RMSE from 0.833 to 0.826 (the bench's
seed) and from 0.878 to 0.874 with 20 ratings a user, where early stopping chose 3
of 20 epochs; a cosine squeezed into those 3 epochs did worse (0.877).

Each rating's L2 penalty is divided by the square root of its user's (and item's)
number of ratings: between per-rating weight decay (as in Funk's SVD), which
over-shrinks heavy users, and a fixed prior per user, which lets a user with three
ratings overfit them. On synthetic data shaped like bench/recommender.py's (another
seed), each at the best of three strengths, that beat per-rating decay by 0.017
RMSE and the fixed prior by 0.005.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray

from modelmint.serving.predictors.recommender import KIND, MAX_K, Ranker
from modelmint.training import distributed
from modelmint.training.epoch_loop import (
    Trainee,
    Validation,
    fit_epochs,
    shuffled_batches,
    step_batches,
    torch_threads,
)
from modelmint.training.matrix_factorization import (
    MatrixFactorization,
    PairwiseLoss,
    RegularizedLoss,
    SquaredLoss,
)
from modelmint.training.ranking_metrics import rmse
from modelmint.training.ratings import Columns, Ratings, read_ratings
from modelmint.training.recipe import (
    DataError,
    Export,
    NotFittedError,
    Progress,
    SearchSpace,
    silent,
)
from modelmint.training.recommender_artifact import ranker_from, save_ranker
from modelmint.training.recommender_ids import as_ids, lookup
from modelmint.training.recommender_reports import TOP, cold_start_report, ranking_report
from modelmint.training.torch_backed import TorchBackedRecipe

__all__ = ["Recommender"]

MODES = ("explicit", "implicit")
# Hyperparameters whose best value differs between the two losses, measured on
# synthetic data: ratings of bench/recommender.py's shape (other seeds than the
# bench's), and clicks drawn from popularity times a low-rank taste, where these
# BPR settings beat a popularity ranking's NDCG@10 (0.18 vs 0.16; 0.21 vs 0.10
# with stronger taste) while regularization=1.0 merely matched it.
DEFAULTS: dict[str, dict[str, Any]] = {
    "explicit": {"epochs": 20, "regularization": 1.0},
    "implicit": {"epochs": 40, "regularization": 0.15},
}
MIN_STEPS = 16  # optimizer steps per epoch, at least, whatever the data size

T = TypeVar("T")
IndexArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


class _ByMode(Generic[T]):
    """A class attribute whose value depends on the instance's ``mode``: the metric
    a recipe is judged by differs between rating prediction and ranking. Read on
    the class, it gives the explicit mode's value."""

    def __init__(self, explicit: T, implicit: T) -> None:
        self.values = {"explicit": explicit, "implicit": implicit}

    def __get__(self, instance: object, owner: type) -> T:
        mode = getattr(instance, "mode", "explicit") if instance is not None else "explicit"
        return self.values.get(str(mode), self.values["explicit"])


@dataclass(frozen=True, slots=True)
class _Encoded:
    """Rows as vocabulary indices (-1: not seen in training)."""

    users: IndexArray
    items: IndexArray
    ratings: FloatArray


class Recommender(TorchBackedRecipe[Ratings]):
    name: ClassVar[str] = "recommender"
    task: ClassVar[str] = "recommendation"
    primary_metric = _ByMode("rmse", f"ndcg@{TOP}")
    greater_is_better = _ByMode(False, True)
    tuning_space: ClassVar[SearchSpace] = {
        "factors": ("choice", [16, 32, 64, 128]),
        "regularization": ("log", 0.01, 10.0),
        "bias_regularization": ("log", 0.01, 3.0),
        "learning_rate": ("log", 0.003, 0.1),
        "epochs": ("int", 10, 40),
    }

    def __init__(
        self,
        *,
        mode: str = "explicit",
        factors: int = 32,
        # None: the mode's default (DEFAULTS). BPR sees one random negative per
        # interaction per epoch, so it needs more epochs than rating regression.
        epochs: int | None = None,
        # Adam's step at the first epoch; it decays to 0 along a cosine over `epochs`.
        learning_rate: float = 0.03,
        # Rows per step, at most: small data sets take smaller batches (_batch_size).
        batch_size: int = 4096,
        # L2 weight of the factors and of the biases, per rating and divided by
        # sqrt(ratings of the user or item): see the module docstring. None: the
        # mode's default; BPR's loss is smaller in scale and wants less.
        regularization: float | None = None,
        bias_regularization: float = 0.2,
        # Epochs without a better validation score before stopping early.
        patience: int = 5,
        # "1,5": ratings outside it are a data error; predictions are clipped to it
        # (default: the range seen in training).
        rating_scale: str | Sequence[float] | None = None,
        # Held-out rows rated at least this count as relevant for Recall/NDCG
        # (default: every held-out row, i.e. "the user chose this item").
        relevant_rating: float | None = None,
        min_rows: int = 20,
        user_column: str = "user",
        item_column: str = "item",
        rating_column: str = "rating",
        seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
    ) -> None:
        self.mode = mode
        self.factors = factors
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.regularization = regularization
        self.bias_regularization = bias_regularization
        self.patience = patience
        self.rating_scale = rating_scale
        self.relevant_rating = relevant_rating
        self.min_rows = min_rows
        self.user_column = user_column
        self.item_column = item_column
        self.rating_column = rating_column
        self.seed = seed
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction

    # -- data ---------------------------------------------------------------------

    def load_data(self, source: str) -> Ratings:
        self._check_params()
        columns = Columns(self.user_column, self.item_column, self.rating_column)
        return read_ratings(
            Path(source),
            columns=columns,
            require_rating=self.mode == "explicit",
            rating_scale=_scale(self.rating_scale),
            min_rows=self.min_rows,
        )

    def rows(self, data: Ratings) -> int:
        return len(data)

    def subset(self, data: Ratings, indices: NDArray[np.int64]) -> Ratings:
        return data.take(indices)

    # -- training -----------------------------------------------------------------

    def fit(
        self,
        train: Ratings,
        val: Ratings | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        self._check_params()
        if len(train) == 0:
            raise DataError(f"{train.source}: no training rows")
        if self.mode == "explicit" and not train.has_ratings:
            raise DataError(f"{train.source} has no rating column; use mode=implicit for clicks")
        # One thread: a step is a few small gathers and sums, and on a busy 2-core
        # machine extra intra-op threads mostly wait for a core.
        with torch_threads(1):
            return self._fit(
                train, val if val is not None and len(val) else None, progress, checkpoint_dir
            )

    def _fit(
        self,
        train: Ratings,
        val: Ratings | None,
        progress: Progress,
        checkpoint_dir: Path | None,
        *,
        stop_at: int | None = None,
    ) -> Self:
        """Learn from ``train``; ``stop_at`` ends the schedule of ``epochs`` epochs early."""
        distributed.init()
        self._learn_vocabulary(train)
        rows = self._encode(train)
        torch.manual_seed(self.seed)
        mean = self.global_mean_ if self.mode == "explicit" else 0.0
        net = MatrixFactorization(len(self.users_), len(self.items_), self.factors, mean)
        objective = self._objective(net)
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        model = distributed.wrap(objective)
        params = self.get_params()
        if stop_at is not None:  # a refit resumes only a refit that stops there too
            params["refit_epochs"] = stop_at
        state = fit_epochs(
            Trainee(net, optimizer),
            epochs=stop_at or self._default("epochs"),
            train_epoch=lambda epoch: {"loss": self._train_epoch(model, optimizer, rows, epoch)},
            validate=None if val is None else functools.partial(self._validate, net, val),
            patience=self.patience,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            params=params,
        )
        self.model_ = net.eval()
        self.history_ = state.history
        self.epochs_trained_ = state.epoch
        self.best_epoch_ = state.best_epoch or state.epoch
        self.refit_rows_ = 0
        self.sample_ = np.stack([rows.users[:8], rows.items[:8]])
        self._module = None
        return self

    def refit(
        self,
        train: Ratings,
        val: Ratings | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        """Train afresh on ``train`` and ``val`` together for the epochs ``fit(train,
        val)`` chose (``best_epoch_``), stopping there on the same learning-rate
        schedule: the run validation picked, on every row but the test ones. Reports
        its epochs as stage ``refit``; ``history_`` stays the validated run's."""
        self.check_fitted()
        if val is None or len(val) == 0:
            return self
        chosen, history = self.best_epoch_, self.history_
        rows = _joined(train, val)

        def renamed(stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
            progress("refit" if stage == "epoch" else stage, done, total, metrics)

        with torch_threads(1):
            self._fit(
                rows,
                None,
                renamed,
                None if checkpoint_dir is None else checkpoint_dir / "refit",
                stop_at=chosen,
            )
        self.history_, self.best_epoch_, self.refit_rows_ = history, chosen, len(rows)
        return self

    def _check_params(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        sizes = (self.factors, self._default("epochs"), self.batch_size, self.patience)
        if min(*sizes, self.min_rows) < 1:
            raise DataError("factors, epochs, batch_size, patience and min_rows must be >= 1")
        regularizations = (self._default("regularization"), self.bias_regularization)
        if self.learning_rate <= 0 or min(regularizations) < 0:
            raise DataError("learning_rate must be > 0 and the regularizations >= 0")
        _scale(self.rating_scale)

    def _default(self, name: str) -> Any:
        """A hyperparameter's value, or its mode's default when it was left None."""
        value = getattr(self, name)
        return DEFAULTS[self.mode][name] if value is None else value

    def _learn_vocabulary(self, train: Ratings) -> None:
        """Id vocabularies (sorted), popularity and each user's training items."""
        self.users_, user_rows = np.unique(train.users, return_inverse=True)
        self.items_, item_rows = np.unique(train.items, return_inverse=True)
        self.item_counts_ = np.bincount(item_rows, minlength=len(self.items_)).astype(np.int64)
        self.user_counts_ = np.bincount(user_rows, minlength=len(self.users_)).astype(np.int64)
        pairs = np.unique(user_rows.astype(np.int64) * len(self.items_) + item_rows)
        self.seen_indices_ = (pairs % len(self.items_)).astype(np.int32)
        self.seen_indptr_ = np.searchsorted(
            pairs // len(self.items_), np.arange(len(self.users_) + 1)
        ).astype(np.int64)
        self.global_mean_ = float(train.ratings.mean())
        scale = _scale(self.rating_scale)
        self.rating_range_ = scale or (float(train.ratings.min()), float(train.ratings.max()))

    def _encode(self, data: Ratings) -> _Encoded:
        return _Encoded(
            lookup(self.users_, data.users), lookup(self.items_, data.items), data.ratings
        )

    def _objective(self, net: MatrixFactorization) -> RegularizedLoss:
        kind = SquaredLoss if self.mode == "explicit" else PairwiseLoss
        return kind(
            net,
            self.user_counts_,
            self.item_counts_,
            self._default("regularization"),
            self.bias_regularization,
        )

    def _train_epoch(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: _Encoded, epoch: int
    ) -> float:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = self._learning_rate(epoch)
        # The order (and BPR's negatives) depend only on (seed, epoch): every rank
        # agrees on them before taking its shard, and a resumed run matches too.
        rng = np.random.default_rng([self.seed, epoch])
        batches = shuffled_batches(rng, len(rows.users), self._batch_size(len(rows.users)))
        users, items = torch.from_numpy(rows.users), torch.from_numpy(rows.items)
        if self.mode == "explicit":
            targets = torch.from_numpy(rows.ratings.astype(np.float32))
        else:
            targets = torch.from_numpy(self._negatives(rows, rng))

        def loss_of(indices: IndexArray) -> torch.Tensor:
            batch = torch.from_numpy(indices)
            loss: torch.Tensor = model(users[batch], items[batch], targets[batch])
            return loss

        return step_batches(optimizer, batches, loss_of)

    def _batch_size(self, rows: int) -> int:
        """``batch_size``, smaller for small data: with fewer than MIN_STEPS steps an
        epoch, Adam barely moves (6,000 ratings in batches of 4096 ended 0.03 RMSE
        worse than in batches of 256)."""
        return max(1, min(self.batch_size, math.ceil(rows / MIN_STEPS)))

    def _learning_rate(self, epoch: int) -> float:
        """Cosine decay from ``learning_rate``, a function of the epoch alone so that a
        resumed run steps like an uninterrupted one."""
        progress = (epoch - 1) / self._default("epochs")
        return float(self.learning_rate * 0.5 * (1 + math.cos(math.pi * progress)))

    def _negatives(self, rows: _Encoded, rng: np.random.Generator) -> IndexArray:
        """One random item per row, for BPR to rank below the row's item. Draws that
        hit an item the user chose are redrawn twice; the few still hitting one are
        left as noise rather than looping."""
        n_items = len(self.items_)
        chosen = np.sort(rows.users * n_items + rows.items)
        negatives = rng.integers(0, n_items, len(rows.users))
        for _ in range(2):
            keys = rows.users * n_items + negatives
            hit = np.searchsorted(chosen, keys).clip(max=len(chosen) - 1)
            clash = chosen[hit] == keys
            if not clash.any():
                break
            negatives[clash] = rng.integers(0, n_items, int(clash.sum()))
        return negatives.astype(np.int64)

    def _validate(self, net: MatrixFactorization, val: Ratings) -> Validation:
        """This epoch's validation metric: RMSE (lower is better) or NDCG."""
        ranker = self._ranker_of(net)
        if self.mode == "explicit":
            value = rmse(self._predict(ranker, val.users, val.items), val.ratings)
            return Validation({self.primary_metric: value}, (-value,))
        value = self._ranking(ranker, val)[f"ndcg@{TOP}"]
        return Validation({self.primary_metric: value}, (value,))

    # -- prediction and evaluation --------------------------------------------------

    def check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"{self.name} is not fitted yet: call fit first")

    def predict(
        self,
        users: Sequence[object] | NDArray[Any],
        items: Sequence[object] | NDArray[Any],
        *,
        clip: bool = True,
    ) -> FloatArray:
        """Predicted ratings (explicit) or scores (implicit) of (user, item) pairs,
        with the cold-start fallbacks; clipped to the rating range in explicit mode.

        ``users[n]`` and ``items[n]`` make pair n: the two must be equally long
        (ValueError otherwise). Ids are strings as in the training file; a number is
        read as the id it spells there (``196`` or ``196.0``: "196")."""
        user_ids = as_ids(users, self.users_, "users")
        item_ids = as_ids(items, self.items_, "items")
        if len(user_ids) != len(item_ids):
            raise ValueError(
                f"predict takes (user, item) pairs: got {len(user_ids)} users and "
                f"{len(item_ids)} items"
            )
        return self._predict(self.ranker(), user_ids, item_ids, clip=clip)

    def _predict(
        self,
        ranker: Ranker,
        users: Sequence[str] | NDArray[np.str_],
        items: Sequence[str] | NDArray[np.str_],
        *,
        clip: bool = True,
    ) -> FloatArray:
        user = lookup(self.users_, np.asarray(users, dtype=np.str_))
        item = lookup(self.items_, np.asarray(items, dtype=np.str_))
        known_user, known_item = user >= 0, item >= 0
        u, i = user.clip(min=0), item.clip(min=0)
        dot = np.einsum("ij,ij->i", ranker.user_factors[u], ranker.item_factors[i])
        scores = (
            ranker.global_mean
            + np.where(known_user, ranker.user_bias[u], 0.0)
            + np.where(known_item, ranker.item_bias[i], 0.0)
            + np.where(known_user & known_item, dot, 0.0)
        )
        if clip:
            scores = np.clip(scores, *ranker.score_range)
        return np.asarray(scores, dtype=np.float64)

    def recommend(
        self, user: object, k: int = 10, exclude: Sequence[object] = ()
    ) -> list[dict[str, Any]]:
        """The top ``k`` items for ``user``, as the exported predictor serves them
        (ids read as ``predict`` reads them)."""
        self.check_fitted()
        index = lookup(self.users_, as_ids([user], self.users_, "user"))
        excluded = lookup(self.items_, as_ids(list(exclude), self.items_, "exclude"))
        [(chosen, scores)] = self.ranker().top(index, k, [excluded[excluded >= 0]])
        return [
            {"item": str(self.items_[c]), "score": float(s)}
            for c, s in zip(chosen.tolist(), scores.tolist(), strict=True)
        ]

    def evaluate(self, data: Ratings) -> dict[str, Any]:
        ranker = self.ranker()
        report: dict[str, Any] = {"rows": len(data)}
        with torch_threads(1):
            if self.mode == "explicit":
                predicted = self._predict(ranker, data.users, data.items)
                report["rmse"] = rmse(predicted, data.ratings)
                report["mae"] = float(np.abs(predicted - data.ratings).mean()) if len(data) else 0.0
            report |= self._ranking(ranker, data)
        report |= cold_start_report(data, users=self.users_, items=self.items_)
        report["epochs_trained"] = self.epochs_trained_
        report["best_epoch"] = self.best_epoch_
        report["refit_rows"] = self.refit_rows_  # 0: learnt from the training rows alone
        return report

    def _ranking(self, ranker: Ranker, data: Ratings) -> dict[str, Any]:
        """Recall and NDCG at ``TOP`` of ``ranker`` on ``data``, and by popularity."""
        return ranking_report(
            ranker, data, users=self.users_, items=self.items_, relevant_rating=self.relevant_rating
        )

    def ranker(self) -> Ranker:
        """The numpy scorer of the network in use, as exported for serving."""
        return self._ranker_of(self.torch_module())

    def _ranker_of(self, module: torch.nn.Module) -> Ranker:
        explicit = self.mode == "explicit"
        return ranker_from(
            module,
            item_counts=self.item_counts_,
            seen_indptr=self.seen_indptr_,
            seen_indices=self.seen_indices_,
            score_range=self.rating_range_ if explicit else (-math.inf, math.inf),
        )

    # -- TorchBacked ----------------------------------------------------------------

    def _trained_network(self) -> torch.nn.Module:
        """The trained factorisation: (user indices, item indices) -> predicted ratings
        (explicit) or scores (implicit), unclipped, for known users and items."""
        return self.model_

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        self.check_fitted()
        return torch.from_numpy(self.sample_[0].copy()), torch.from_numpy(self.sample_[1].copy())

    # -- export ---------------------------------------------------------------------

    def export(self, directory: Path) -> Export:
        ranker = self.ranker()
        save_ranker(directory / "model.npz", ranker)
        vocab = {"users": self.users_.tolist(), "items": self.items_.tolist()}
        (directory / "vocab.json").write_text(json.dumps(vocab))
        config = {
            "mode": self.mode,
            "factors": int(ranker.user_factors.shape[1]),
            "users": len(self.users_),
            "items": len(self.items_),
            "rating_range": list(self.rating_range_) if self.mode == "explicit" else None,
            "params": self.get_params(),
            # What the params leave open: the epochs validation chose, and whether the
            # model was refit on the training and validation rows for them.
            "epochs_trained": self.epochs_trained_,
            "refit_rows": self.refit_rows_,
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2, default=list))
        exported = Export(
            kind=KIND,
            task=self.task,
            format="npz",
            files=("config.json", "model.npz", "vocab.json"),
            serving={
                "mode": self.mode,
                "users": len(self.users_),
                "items": len(self.items_),
                "max_k": MAX_K,
            },
        )
        exported.write_manifest(directory)
        return exported


def _scale(value: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``rating_scale`` as (low, high): from "1,5", "1..5" or a pair of numbers."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    parts: Sequence[object] = (
        value.replace("..", ",").split(",") if isinstance(value, str) else value
    )
    try:
        low, high = (float(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise DataError(f"rating_scale must be two numbers like 1,5; got {value!r}") from None
    if not low < high:
        raise DataError(f"rating_scale must go from low to high; got {value!r}")
    return low, high


def _joined(first: Ratings, second: Ratings) -> Ratings:
    """The rows of ``first`` then ``second`` (parts of one split: no pair is in both)."""
    return Ratings(
        first.source,
        np.concatenate([first.users, second.users]),
        np.concatenate([first.items, second.items]),
        np.concatenate([first.ratings, second.ratings]),
        first.has_ratings and second.has_ratings,
    )
