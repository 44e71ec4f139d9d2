"""Torch state dicts that an export writes and a predictor loads back, whatever the
network: dynamic int8 quantization and magnitude pruning change what a state dict
holds, and the predictor must rebuild the same form before loading it.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["QUANTIZED", "portable_state", "quantization_of", "quantize"]

# The ``quantization`` a config.json names for a dynamically int8-quantized network.
QUANTIZED = "dynamic-int8"


def quantize(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with dynamic int8 Linear layers: the skeleton a quantized state dict fits."""
    with warnings.catch_warnings():
        # torch announces a move of eager quantization to torchao; it still works here.
        warnings.simplefilter("ignore")
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            net, {torch.nn.Linear}, dtype=torch.qint8
        )
    return quantized


def quantization_of(module: torch.nn.Module) -> str | None:
    """``"dynamic-int8"`` when ``module`` holds dynamically quantized Linear layers."""
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    return QUANTIZED if any(isinstance(m, dynamic) for m in module.modules()) else None


def portable_state(module: torch.nn.Module) -> OrderedDict[str, Any]:
    """``module``'s state dict, with magnitude-pruning masks folded into the weights
    (``weight = weight_orig * weight_mask``) so it loads into a plain network."""
    state = module.state_dict()
    out: OrderedDict[str, Any] = OrderedDict()
    # Quantized layers read their format version from the metadata: keep it.
    out._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    for key, value in state.items():
        if key.endswith("_orig") and key.removesuffix("_orig") + "_mask" in state:
            base = key.removesuffix("_orig")
            out[base] = value * state[base + "_mask"]
        elif not (key.endswith("_mask") and key.removesuffix("_mask") + "_orig" in state):
            out[key] = value
    return out
