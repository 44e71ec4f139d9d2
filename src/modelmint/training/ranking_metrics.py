"""Rating and ranking metrics as pure functions over numpy arrays, for the
``recommender`` recipe's reports (RMSE; Recall@k and NDCG@k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["ranking_metrics", "rmse"]

IndexArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


def rmse(predicted: FloatArray, actual: FloatArray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2))) if len(actual) else 0.0


def ranking_metrics(
    ranked: Sequence[IndexArray], relevant: Sequence[set[int]], totals: IndexArray, k: int
) -> tuple[float, float]:
    """Mean Recall@k (hits / min(k, relevant)) and NDCG@k with binary relevance.

    Per user: ``ranked`` its top items (at most ``k``), ``relevant`` the items it
    chose, ``totals`` how many relevant rows it has (items unseen in training
    included: they count against recall though they cannot be ranked)."""
    if not ranked:
        return 0.0, 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for chosen, wanted, total in zip(ranked, relevant, totals.tolist(), strict=True):
        hits = np.array([item in wanted for item in chosen.tolist()], dtype=bool)
        ideal = min(k, total)
        recalls.append(hits.sum() / ideal)
        ndcgs.append(discounts[: len(hits)][hits].sum() / discounts[:ideal].sum())
    return float(np.mean(recalls)), float(np.mean(ndcgs))
