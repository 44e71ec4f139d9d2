"""The trained recommender as serving takes it: the numpy ``Ranker`` read out of the torch
factorisation, and the ``model.npz`` the serving predictor loads it back from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from modelmint.serving.predictors.recommender import Ranker

__all__ = ["ranker_from", "save_ranker"]


def ranker_from(
    module: torch.nn.Module,
    *,
    item_counts: NDArray[np.int64],
    seen_indptr: NDArray[np.int64],
    seen_indices: NDArray[np.int32],
    score_range: tuple[float, float],
) -> Ranker:
    """The numpy scorer of a factorisation network (trained, pruned or quantized), with
    the training popularity and seen items that ranking needs beside it."""
    return Ranker(
        user_factors=_table(module, "user_factors"),
        item_factors=_table(module, "item_factors"),
        user_bias=_table(module, "user_bias")[:, 0],
        item_bias=_table(module, "item_bias")[:, 0],
        global_mean=float(torch.as_tensor(module.global_mean)),
        item_counts=item_counts,
        seen_indptr=seen_indptr,
        seen_indices=seen_indices,
        score_range=score_range,
    )


def save_ranker(path: Path, ranker: Ranker) -> None:
    """Write ``ranker`` to ``path`` (``model.npz``), popularity order included."""
    np.savez(
        path,
        user_factors=ranker.user_factors,
        item_factors=ranker.item_factors,
        user_bias=ranker.user_bias,
        item_bias=ranker.item_bias,
        global_mean=np.float64(ranker.global_mean),
        item_counts=ranker.item_counts,
        popular=ranker.popular(),
        seen_indptr=ranker.seen_indptr,
        seen_indices=ranker.seen_indices,
        score_range=np.array(ranker.score_range, dtype=np.float64),
    )


def _table(module: torch.nn.Module, name: str) -> NDArray[np.float32]:
    """An embedding table of ``module`` as numpy, also from a pruned copy (whose
    ``weight`` is the masked tensor) or a quantized one (whose ``weight()`` is)."""
    weight = getattr(module, name).weight
    tensor = weight() if callable(weight) else weight
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    return np.asarray(tensor.detach().float().numpy(), dtype=np.float32)
