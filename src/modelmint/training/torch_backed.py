"""The ``TorchBacked`` bookkeeping shared by recipes whose predictions come from one
trained torch network (tabular, text, recommender).

Compression puts a quantized or pruned copy in place of the network with
``use_module``, measures it, and puts the original back the same way; prediction,
evaluation and export go through ``torch_module`` so that they use whichever is
in place. The recipes kept that bookkeeping, and the export of the weights in use,
as identical copies; this base class is the one copy. What differs stays in each
recipe: which attribute holds the trained network, and its ``example_inputs``.

The image recipe does not use it: it holds the network in use in ``module_``
itself (``use_module`` replaces it), and checks its weights against the predictor
before writing them.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TypeVar

import torch

from modelmint.serving.predictors.torch_state import portable_state, quantization_of
from modelmint.training.recipe import Recipe

__all__ = ["TorchBackedRecipe"]

D = TypeVar("D")


class TorchBackedRecipe(Recipe[D]):
    """A recipe that implements ``TorchBacked`` by keeping its trained network and,
    beside it, the module ``use_module`` put in its place, so the trained one is
    never lost. ``fit`` must set ``_module`` to None: a refit predicts with its new
    network, not with a copy of the previous one."""

    # What use_module put in place of the trained network; None: the trained one.
    _module: torch.nn.Module | None

    @abstractmethod
    def _trained_network(self) -> torch.nn.Module:
        """The network ``fit`` learned, whatever ``use_module`` put in its place."""

    @abstractmethod
    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """A small batch of already-preprocessed inputs, for tracing and parity checks."""

    def torch_module(self) -> torch.nn.Module:
        """The network in use, in eval mode: the trained one unless ``use_module``
        replaced it."""
        self.check_fitted()
        return (self._module or self._trained_network()).eval()

    def use_module(self, module: torch.nn.Module) -> None:
        self.check_fitted()
        self._module = module

    def _save_weights(self, path: Path) -> str | None:
        """Write the weights of the network in use to ``path`` in the form the
        predictors load (``portable_state``), and return its quantization (None for
        a float network), which the exported config and manifest record."""
        module = self.torch_module()
        torch.save(portable_state(module), path)
        return quantization_of(module)
