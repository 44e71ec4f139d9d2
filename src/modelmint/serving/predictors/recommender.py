"""Serve top-k recommendations from a model exported by the ``recommender`` recipe.

An item is ``{"user": "u42", "k": 10, "exclude": ["i7"]}`` (``k`` from 1 to 100,
default 10; ``exclude`` optional). The result is ``{"user", "items": [{"item",
"score"}], "cold_start"}``: the best-scoring items the user has not rated in
training and did not exclude. A user unknown to the model (``cold_start``) gets
the most popular items instead, scored by their popularity (the share of training
users who rated or chose each), so that scores fall down the list there too.

The ranking itself (``Ranker``) is plain numpy, defined here once and used by the
recipe's evaluation too, so what is measured is what is served.

Folder layout: ``manifest.json``; ``config.json`` (mode, sizes, rating range);
``vocab.json`` (user and item ids in index order); ``model.npz`` (factors, biases,
global mean, popularity, and the items each user rated in training as CSR arrays).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelmint.errors import InvalidRequest

__all__ = [
    "DEFAULT_K",
    "KIND",
    "MAX_K",
    "Query",
    "Ranker",
    "RecommenderPredictor",
    "load",
]

KIND = "recommender"
DEFAULT_K = 10
MAX_K = 100
# More exclusions than this in one request is a client bug, not a preference.
MAX_EXCLUDE = 10_000

IndexArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Query:
    """One validated request: user id, how many items, ids never to return."""

    user: str
    k: int = DEFAULT_K
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Ranker:
    """Scores every item for users given by index, and picks the top k.

    A known user's score is ``global_mean + user_bias + item_bias + user . item``
    (the predicted rating in explicit mode), clipped to ``score_range`` when shown;
    ranking uses the unclipped ones so a tie at the top of the scale keeps its order.

    A user index of -1 is unknown: ranked by training popularity and shown that
    popularity, the share of training users who rated or chose the item. Not the
    predicted rating (global mean + item bias): ranking by it puts first items a
    few enthusiasts rated, which recalled fewer of the items held-out users went on
    to rate on data shaped like bench/recommender.py's (Recall@10 0.15 against 0.18
    by popularity; 0.09 against 0.23 with 20 ratings a user), and showing it beside
    a popularity ranking made scores jump up and down the list.
    """

    user_factors: NDArray[np.float32]  # (users, factors)
    item_factors: NDArray[np.float32]  # (items, factors)
    user_bias: NDArray[np.float32]  # (users,)
    item_bias: NDArray[np.float32]  # (items,)
    global_mean: float
    item_counts: IndexArray  # (items,) training interactions per item
    seen_indptr: IndexArray  # (users + 1,) CSR row pointers of items rated in training
    seen_indices: NDArray[np.int32]  # item indices, sorted within each user
    score_range: tuple[float, float] = (-np.inf, np.inf)

    @property
    def n_items(self) -> int:
        return len(self.item_bias)

    @property
    def n_users(self) -> int:
        return len(self.user_bias)

    def seen(self, user: int) -> NDArray[np.int32]:
        if user < 0:
            return self.seen_indices[:0]
        return self.seen_indices[self.seen_indptr[user] : self.seen_indptr[user + 1]]

    def popular(self) -> IndexArray:
        """Item indices from most to least popular (ties: lower index first)."""
        return np.argsort(-self.item_counts, kind="stable").astype(np.int64)

    def key(self, user: int, *, by_popularity: bool = False) -> FloatArray:
        """The ranking key of every item for one user (-1: unknown); higher first.

        One matrix-vector product per user, never one product per batch: a batched
        product may round differently, and an answer must not depend on which other
        requests share its batch."""
        if user < 0 or by_popularity:
            return self.item_counts.astype(np.float64)
        affinity = self.item_factors @ self.user_factors[user] + self.item_bias
        key = affinity + (self.user_bias[user] + self.global_mean)
        return np.asarray(key, dtype=np.float64)

    def shown(self, user: int, keys: FloatArray) -> FloatArray:
        """The scores to show for items whose ranking keys are ``keys``."""
        if user < 0:  # keys are training counts: shown as a share of the users
            return np.asarray(keys / max(self.n_users, 1), dtype=np.float64)
        return np.clip(keys, *self.score_range)

    def top(
        self,
        users: IndexArray,
        k: int,
        exclude: Sequence[IndexArray] = (),
        *,
        by_popularity: bool = False,
    ) -> list[tuple[IndexArray, FloatArray]]:
        """For each user, up to ``k`` (item indices, shown scores), best first,
        leaving out the items the user rated in training and ``exclude[row]``."""
        results: list[tuple[IndexArray, FloatArray]] = []
        for row, user in enumerate(users.tolist()):
            key = self.key(user, by_popularity=by_popularity)
            key[self.seen(user)] = -np.inf
            if exclude:
                key[exclude[row]] = -np.inf
            chosen = _best(key, k)
            chosen = chosen[np.isfinite(key[chosen])]
            results.append((chosen, self.shown(user, key[chosen])))
        return results


def _best(row: FloatArray, k: int) -> IndexArray:
    """Indices of the k largest keys, largest first; equal keys in index order,
    exactly, so the first j of a top k are the top j whatever k is."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= len(row):
        candidates = np.arange(len(row))
    else:
        threshold = row[np.argpartition(-row, k - 1)[:k]].min()
        above = np.flatnonzero(row > threshold)
        ties = np.flatnonzero(row == threshold)[: k - len(above)]
        candidates = np.concatenate([above, ties])
    order = np.lexsort((candidates, -row[candidates]))
    return candidates[order].astype(np.int64)


class RecommenderPredictor:
    task = "recommendation"

    def __init__(
        self, ranker: Ranker, users: Sequence[str], items: Sequence[str], config: dict[str, Any]
    ) -> None:
        self._ranker = ranker
        self._users = {user: index for index, user in enumerate(users)}
        self._item_ids = list(items)
        self._items = {item: index for index, item in enumerate(items)}
        self._config = config

    def validate(self, item: Any) -> Query:
        if not isinstance(item, dict):
            raise InvalidRequest('each input must be an object like {"user": "u1", "k": 10}')
        unknown = sorted(str(key) for key in item if key not in ("user", "k", "exclude"))
        if unknown:
            raise InvalidRequest(
                f"unknown field {', '.join(map(repr, unknown))}; expected user, k, exclude"
            )
        if "user" not in item:
            raise InvalidRequest("user is required: the id of the user to recommend for")
        return Query(
            user=_identifier(item["user"], "user"),
            k=_k(item.get("k", DEFAULT_K)),
            exclude=_exclusions(item.get("exclude", [])),
        )

    def predict(self, items: list[Query]) -> list[dict[str, Any]]:
        users = np.array([self._users.get(query.user, -1) for query in items], dtype=np.int64)
        exclude = [
            np.array([self._items[i] for i in query.exclude if i in self._items], dtype=np.int64)
            for query in items
        ]
        k = max((query.k for query in items), default=0)
        ranked = self._ranker.top(users, k, exclude)
        return [
            {
                "user": query.user,
                "items": [
                    {"item": self._item_ids[index], "score": float(score)}
                    for index, score in zip(
                        chosen[: query.k].tolist(), scores[: query.k].tolist(), strict=True
                    )
                ],
                "cold_start": bool(user < 0),
            }
            for query, user, (chosen, scores) in zip(items, users.tolist(), ranked, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        mode = self._config.get("mode", "explicit")
        known = "predicted rating" if mode == "explicit" else "relevance (higher is better)"
        return {
            "kind": KIND,
            "mode": mode,
            "users": len(self._users),
            "items": len(self._item_ids),
            "max_k": MAX_K,
            "default_k": DEFAULT_K,
            "score": f"{known}; for a cold-start user, the share of users who rated the item",
        }


def _identifier(value: Any, field: str) -> str:
    # Ids are read from CSV as strings; a client sending the number 42 means "42".
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{field} must be a non-empty string id, got {value!r}")
    return value.strip()


def _k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise InvalidRequest(f"k must be an integer from 1 to {MAX_K}, got {value!r}")
    return value


def _exclusions(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise InvalidRequest(f"exclude must be a list of item ids, got {value!r}")
    if len(value) > MAX_EXCLUDE:
        raise InvalidRequest(f"exclude lists {len(value)} items; at most {MAX_EXCLUDE} are allowed")
    return tuple(_identifier(item, "each excluded item") for item in value)


def load(directory: Path, manifest: dict[str, Any], threads: int) -> RecommenderPredictor:
    # Scoring is one small matrix product per batch in numpy; ``threads`` has no
    # torch pool to size here.
    config = json.loads((directory / "config.json").read_text())
    vocab = json.loads((directory / "vocab.json").read_text())
    with np.load(directory / "model.npz", allow_pickle=False) as arrays:
        ranker = Ranker(
            user_factors=arrays["user_factors"],
            item_factors=arrays["item_factors"],
            user_bias=arrays["user_bias"],
            item_bias=arrays["item_bias"],
            global_mean=float(arrays["global_mean"]),
            item_counts=arrays["item_counts"].astype(np.int64),
            seen_indptr=arrays["seen_indptr"].astype(np.int64),
            seen_indices=arrays["seen_indices"].astype(np.int32),
            score_range=(float(arrays["score_range"][0]), float(arrays["score_range"][1])),
        )
    return RecommenderPredictor(ranker, vocab["users"], vocab["items"], config)
