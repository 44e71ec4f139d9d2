"""Local embedding backend: a sentence-transformers model folder run with PyTorch.

Mean pooling over the token embeddings, then L2 normalisation, as the model's
own pooling config prescribes for all-MiniLM-L6-v2. Inputs longer than the
model's maximum sequence length are refused rather than silently truncated:
the caller pays per token and should get what it paid for.

Concurrent requests share forward passes through a ``DynamicBatcher``; each
request is charged the share of every batch's busy time that its tokens make up
(``Usage.engine_ms``). The runtime is one hook, ``_load_encoder``: the ONNX
Runtime backend (``onnx_embedder``) reuses everything else.

    backend = SentenceEmbeddingBackend(model_dir, n_threads=2)
    await backend.start()
    result = await backend.embed(["a sentence", "another"])
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from modelmint.errors import InvalidRequest, ServiceUnavailable
from modelmint.serving.dynamic_batching import BatchLimits, DynamicBatcher
from modelmint.serving.types import EmbeddingResult, Usage

__all__ = [
    "Encoder",
    "MeanPooled",
    "SentenceEmbeddingBackend",
    "filler_token",
    "length_groups",
    "load_transformer",
    "pad_batch",
]

# (batch, tokens) int64 ids and attention mask -> (batch, dim) float32 unit vectors.
Encoder = Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[np.float32]]


class MeanPooled(torch.nn.Module):
    """The transformer plus the model's pooling: mean over real tokens, then L2 norm.

    One module for both runtimes: PyTorch runs it, and the ONNX export traces it, so
    the two cannot pool differently.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (batch, tokens, dim)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (batch, dim)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def load_transformer(model_dir: Path, **kwargs: Any) -> torch.nn.Module:
    """The folder's transformer in eval mode, from disk only (never the network)."""
    # Everything is on disk; never let a library try the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    model: torch.nn.Module = AutoModel.from_pretrained(str(model_dir), **kwargs)
    return model.eval()


class SentenceEmbeddingBackend:
    """An ``EmbeddingBackend`` for a sentence-transformers folder, batched, on PyTorch."""

    # A forward call costs about as much as this many padded tokens beyond its tokens
    # (Python dispatch through every layer): the price of splitting a batch in two.
    call_overhead_tokens = 96

    def __init__(
        self,
        model_dir: Path,
        *,
        n_threads: int,
        limits: BatchLimits | None = None,
        model: str = "",
        deployment: str = "",
    ) -> None:
        self._dir = model_dir
        self._threads = n_threads
        self._limits = limits or BatchLimits()
        self._labels = (model, deployment)
        self._tokenizer: Any = None
        self._encode: Encoder | None = None
        self._filler = 0
        self._batcher: DynamicBatcher[list[int], list[float]] | None = None
        self.max_tokens = 512
        self.dimensions = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        model, deployment = self._labels
        batcher = DynamicBatcher(self._run, self._limits, model=model, deployment=deployment)
        batcher.start()
        self._batcher = batcher

    def _load(self) -> None:
        from tokenizers import Tokenizer

        config_path = self._dir / "sentence_bert_config.json"
        if config_path.exists():
            self.max_tokens = int(json.loads(config_path.read_text())["max_seq_length"])
        config = json.loads((self._dir / "config.json").read_text())
        self.dimensions = int(config["hidden_size"])
        tokenizer = Tokenizer.from_file(str(self._dir / "tokenizer.json"))
        # Counted exactly and refused when too long: never cut, never padded here.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        # Padded positions are masked out of attention and pooling, so their token never
        # changes a vector; a frequent word keeps their activations in the range of real
        # text, which an int8 model's per-batch quantisation scale depends on ([PAD]'s
        # are far outside it).
        self._filler = filler_token(tokenizer)
        self._encode = self._load_encoder()

    def _load_encoder(self) -> Encoder:
        """The runtime: PyTorch here, ONNX Runtime in the subclass."""
        module = MeanPooled(load_transformer(self._dir))
        threads = self._threads

        def encode(
            ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]
        ) -> npt.NDArray[np.float32]:
            # OpenMP keeps the thread count per calling thread: set it where batches run.
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                vectors = module(torch.from_numpy(ids), torch.from_numpy(mask))
            return vectors.numpy()  # type: ignore[no-any-return]

        return encode

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
            self._batcher = None

    # -- requests (event loop) -------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text).ids)

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        batcher = self._batcher
        if batcher is None:
            raise ServiceUnavailable("model is still loading", retry_after=1)
        # Tokenizing is microseconds a text: done here, so a too-long input is refused
        # before it queues, and the exact token counts are the batch cost units.
        if len(texts) == 1:
            tokens = [self._tokenizer.encode(texts[0]).ids]
        else:
            tokens = [e.ids for e in self._tokenizer.encode_batch(texts)]
        for i, ids in enumerate(tokens):
            if len(ids) > self.max_tokens:
                raise InvalidRequest(
                    f"input[{i}] has {len(ids)} tokens; this model takes at most {self.max_tokens}",
                    param="input",
                    code="context_length_exceeded",
                )
        counts = [len(ids) for ids in tokens]
        done = await batcher.submit(tokens, counts)
        return EmbeddingResult(
            vectors=done.results, usage=Usage(input_tokens=sum(counts), engine_ms=done.engine_ms)
        )

    # -- batches (worker thread) -------------------------------------------------------------

    def _run(self, batch: list[list[int]]) -> list[list[float]]:
        """Embed one batch: similar lengths share a forward call, so little is padding."""
        encode = self._encode
        assert encode is not None
        out: list[list[float]] = [[] for _ in batch]
        for group in length_groups([len(ids) for ids in batch], self.call_overhead_tokens):
            vectors = encode(*pad_batch([batch[i] for i in group], self._filler))  # (group, dim)
            for row, index in enumerate(group):
                out[index] = vectors[row].tolist()
        return out


def pad_batch(
    batch: list[list[int]], filler: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Token ids padded with ``filler`` to the longest, and the mask of real tokens."""
    width = max(len(ids) for ids in batch)
    ids = np.full((len(batch), width), filler, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, tokens in enumerate(batch):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def length_groups(lengths: list[int], overhead: int) -> list[list[int]]:
    """Indexes of ``lengths`` in ascending length, cut into groups for separate calls.

    A group is padded to its longest member; every call costs about ``overhead``
    tokens more. The cut points minimise padded tokens plus calls (a small dynamic
    program over the sorted lengths: a batch holds tens of items, so this is cheap).
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ranked = [lengths[i] for i in order]
    # best[j]: the cheapest cost of the first j sorted items; cut[j]: where its last group starts.
    best = [0] * (len(ranked) + 1)
    cut = [0] * (len(ranked) + 1)
    for j in range(1, len(ranked) + 1):
        width = ranked[j - 1]
        best[j], cut[j] = min((best[i] + (j - i) * width + overhead, i) for i in range(j))
    groups: list[list[int]] = []
    j = len(ranked)
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    groups.reverse()
    return groups


def filler_token(tokenizer: Any) -> int:
    """The id used to pad batches: a frequent word when the vocabulary has one."""
    for word in ("the", "\u2581the", "Ġthe"):  # WordPiece, SentencePiece, byte-level BPE
        token = tokenizer.token_to_id(word)
        if token is not None:
            return int(token)
    return 0
