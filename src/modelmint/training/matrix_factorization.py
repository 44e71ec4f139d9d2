"""Matrix factorisation with biases, and the two losses the ``recommender`` recipe
trains it with: squared error on explicit ratings, BPR on implicit interactions.

The serving side never sees these modules: an export turns the learned tables
into numpy (``modelmint.serving.predictors.recommender.Ranker``).
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

__all__ = ["MatrixFactorization", "PairwiseLoss", "RegularizedLoss", "SquaredLoss"]


class MatrixFactorization(torch.nn.Module):
    """``global_mean + user_bias[u] + item_bias[i] + user_factors[u] . item_factors[i]``."""

    global_mean: torch.Tensor

    def __init__(self, users: int, items: int, factors: int, global_mean: float) -> None:
        super().__init__()
        self.user_factors = torch.nn.Embedding(users, factors)
        self.item_factors = torch.nn.Embedding(items, factors)
        self.user_bias = torch.nn.Embedding(users, 1)
        self.item_bias = torch.nn.Embedding(items, 1)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        # Small random factors break the symmetry; biases start as "no offset".
        torch.nn.init.normal_(self.user_factors.weight, std=0.1)
        torch.nn.init.normal_(self.item_factors.weight, std=0.1)
        torch.nn.init.zeros_(self.user_bias.weight)
        torch.nn.init.zeros_(self.item_bias.weight)

    def users(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, factors) factors and (batch,) biases of ``users``."""
        return self.user_factors(users), self.user_bias(users).squeeze(-1)

    def items(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.item_factors(items), self.item_bias(items).squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # users, items: (batch,) int64 indices -> (batch,) predicted ratings
        (p, b_user), (q, b_item) = self.users(users), self.items(items)
        return self.global_mean + b_user + b_item + (p * q).sum(dim=-1)


class RegularizedLoss(torch.nn.Module):
    """A batch's mean loss plus its L2 penalty, as one module so that
    DistributedDataParallel sees every parameter used in one forward. Each row is
    looked up once: embedding backward passes are most of a training step.

    A row's penalty is divided by the square root of its user's (and item's) number
    of training ratings (``user_counts``, ``item_counts``): see the recipe's docstring.
    """

    def __init__(
        self,
        model: MatrixFactorization,
        user_counts: NDArray[np.int64],
        item_counts: NDArray[np.int64],
        reg: float,
        bias_reg: float,
    ) -> None:
        super().__init__()
        self.model = model
        self.user_weight, self.item_weight = _inverse_sqrt(user_counts), _inverse_sqrt(item_counts)
        self.reg, self.bias_reg = reg, bias_reg

    def penalty(
        self, weight: torch.Tensor, factors: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        return weight * (self.reg * factors.square().sum(-1) + self.bias_reg * bias.square())


class SquaredLoss(RegularizedLoss):
    """Explicit ratings: squared error of the predicted rating."""

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor
    ) -> torch.Tensor:
        (p, b_user), (q, b_item) = self.model.users(users), self.model.items(items)
        error = self.model.global_mean + b_user + b_item + (p * q).sum(dim=-1) - ratings
        penalty = self.penalty(self.user_weight[users], p, b_user) + self.penalty(
            self.item_weight[items], q, b_item
        )
        return (error.square() + penalty).mean()


class PairwiseLoss(RegularizedLoss):
    """Implicit feedback (BPR): ``-log sigmoid(score(u, chosen) - score(u, other))``
    for an item ``other`` the user did not choose. The user's bias and the global
    mean cancel out of the difference."""

    def forward(
        self, users: torch.Tensor, chosen: torch.Tensor, other: torch.Tensor
    ) -> torch.Tensor:
        p, b_user = self.model.users(users)
        (q, b_chosen), (q_other, b_other) = self.model.items(chosen), self.model.items(other)
        margin = b_chosen - b_other + (p * (q - q_other)).sum(dim=-1)
        penalty = (
            self.penalty(self.user_weight[users], p, b_user)
            + self.penalty(self.item_weight[chosen], q, b_chosen)
            + self.penalty(self.item_weight[other], q_other, b_other)
        )
        return (torch.nn.functional.softplus(-margin) + penalty).mean()


def _inverse_sqrt(counts: NDArray[np.int64]) -> torch.Tensor:
    return torch.from_numpy(1.0 / np.sqrt(np.maximum(counts, 1))).float()
