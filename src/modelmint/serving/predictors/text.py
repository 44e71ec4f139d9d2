"""Serve a text classifier exported by the ``text-classifier`` recipe.

An item is one string. It is tokenized once in ``validate``, which refuses empty
text and text longer than the length the model was trained at (rather than
cutting it silently: the answer would be about a text the caller did not send).
The network (a BERT-style encoder, mean pooling over real tokens, a linear head)
is defined here and imported by the recipe, so training and serving share it.

Folder layout: ``manifest.json``, ``config.json`` (labels, max_length, quantization),
``encoder/config.json`` (the encoder's shape), ``tokenizer.json`` and ``weights.pt``
(the state dict of the whole network: encoder and head).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modelmint.errors import InvalidRequest
from modelmint.serving.predictors.tabular import scores_from_logits
from modelmint.serving.predictors.torch_state import QUANTIZED, quantize

__all__ = [
    "KIND",
    "TextClassifierNet",
    "TextPredictor",
    "build_module",
    "load",
    "offline_transformers",
    "pad",
]

KIND = "text-classifier"
# Rows per forward pass: bounds the padded (batch, tokens, hidden) activations.
BATCH = 32


class TextClassifierNet(torch.nn.Module):
    """Encoder -> mean of the token states of real (unpadded) tokens -> linear head."""

    def __init__(self, encoder: torch.nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # (batch, tokens) -> (batch, tokens, hidden)
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        out: torch.Tensor = self.head(pooled)  # (batch, classes)
        return out


def pad(token_ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids, attention_mask), right-padded to the longest."""
    width = max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), width), dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def offline_transformers() -> None:
    """Keep transformers off the network and quiet (no progress bars, no notices)."""
    # Everything is on disk; never let a library try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]


def build_module(
    encoder_dir: Path, config: Mapping[str, Any], state: Mapping[str, Any]
) -> torch.nn.Module:
    """The exported network rebuilt from shapes alone (no base weights needed), then
    filled from ``state``; quantized first when it was exported quantized."""
    offline_transformers()
    from transformers import AutoConfig, AutoModel

    shape = AutoConfig.from_pretrained(str(encoder_dir))
    encoder = AutoModel.from_config(shape, add_pooling_layer=False)  # type: ignore[no-untyped-call]
    net: torch.nn.Module = TextClassifierNet(encoder, int(config["hidden"]), len(config["labels"]))
    if config.get("quantization") == QUANTIZED:
        net = quantize(net)
    net.load_state_dict(state)
    return net.eval()


class TextPredictor:
    task = "classification"

    def __init__(
        self, tokenizer: Any, net: torch.nn.Module, labels: Sequence[str], max_tokens: int
    ) -> None:
        self._tokenizer = tokenizer
        self._net = net
        self._labels = list(labels)
        self.max_tokens = max_tokens

    def validate(self, item: Any) -> list[int]:
        """The text's token ids, after checking it is a non-empty string that fits."""
        if not isinstance(item, str):
            raise InvalidRequest(f"each input must be a string, got {type(item).__name__}")
        if not item.strip():
            raise InvalidRequest("input text is empty")
        ids: list[int] = self._tokenizer.encode(item).ids
        if len(ids) > self.max_tokens:
            raise InvalidRequest(
                f"input text has {len(ids)} tokens; this model takes at most {self.max_tokens}",
                code="context_length_exceeded",
            )
        return ids

    def predict(self, items: list[list[int]]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        with torch.inference_mode():
            for start in range(0, len(items), BATCH):
                logits = self._net(*pad(items[start : start + BATCH]))
                results.extend(scores_from_logits(logits, self._labels))
        return results

    def describe(self) -> dict[str, Any]:
        return {"kind": KIND, "labels": list(self._labels), "max_tokens": self.max_tokens}


def load(directory: Path, manifest: dict[str, Any], threads: int) -> TextPredictor:
    from tokenizers import Tokenizer

    torch.set_num_threads(threads)
    config = json.loads((directory / "config.json").read_text())
    state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
    net = build_module(directory / "encoder", config, state)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()  # over-long texts are refused in validate, never cut
    tokenizer.no_padding()
    return TextPredictor(tokenizer, net, config["labels"], int(config["max_length"]))
