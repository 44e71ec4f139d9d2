"""What the ``recommender`` recipe reports about held-out rows beside its rating errors:
how well it ranks (Recall@k, NDCG@k, against a ranking by popularity) and how many
rows it met cold (a user or item training never saw).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelmint.serving.predictors.recommender import Ranker
from modelmint.training.ranking_metrics import ranking_metrics
from modelmint.training.ratings import Ratings
from modelmint.training.recommender_ids import lookup

__all__ = ["TOP", "cold_start_report", "ranking_report"]

TOP = 10  # the cutoff of Recall@k and NDCG@k


def ranking_report(
    ranker: Ranker,
    data: Ratings,
    *,
    users: NDArray[np.str_],
    items: NDArray[np.str_],
    relevant_rating: float | None,
) -> dict[str, Any]:
    """Recall@10 and NDCG@10 of the items ranked for each user with a relevant
    held-out row, beside the same for a ranking by popularity.

    ``users`` and ``items`` are the training vocabularies. Candidates are the training
    items the user has not rated in training. Recall@k is hits / min(k, relevant); a
    relevant item unseen in training counts against both, since it can never be
    recommended."""
    relevant_rows = np.ones(len(data), dtype=bool)
    if relevant_rating is not None:
        relevant_rows = data.ratings >= float(relevant_rating)
    names, group = np.unique(data.users[relevant_rows], return_inverse=True)
    chosen = lookup(items, data.items[relevant_rows])
    relevant: list[set[int]] = [set() for _ in names]
    for g, item in zip(group.tolist(), chosen.tolist(), strict=True):
        if item >= 0:
            relevant[g].add(item)
    totals = np.bincount(group, minlength=len(names)).astype(np.int64)
    ranked_users = lookup(users, names)
    report: dict[str, Any] = {"users_ranked": len(names)}
    for prefix, by_popularity in (("", False), ("popularity_", True)):
        ranked = ranker.top(ranked_users, TOP, by_popularity=by_popularity)
        recall, ndcg = ranking_metrics([r[0] for r in ranked], relevant, totals, TOP)
        report[f"{prefix}recall@{TOP}"] = recall
        report[f"{prefix}ndcg@{TOP}"] = ndcg
    return report


def cold_start_report(
    data: Ratings, *, users: NDArray[np.str_], items: NDArray[np.str_]
) -> dict[str, int]:
    """Held-out rows whose user or item training never saw, and how many distinct."""
    cold_users = lookup(users, data.users) < 0
    cold_items = lookup(items, data.items) < 0
    return {
        "cold_start_rows": int((cold_users | cold_items).sum()),
        "cold_start_users": len(np.unique(data.users[cold_users])),
        "cold_start_items": len(np.unique(data.items[cold_items])),
    }
