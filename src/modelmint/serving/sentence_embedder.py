"""Local embedding backend: a sentence-transformers model folder run with PyTorch.

Mean pooling over the token embeddings, then L2 normalisation, as the model's
own pooling config prescribes for all-MiniLM-L6-v2. Inputs longer than the
model's maximum sequence length are refused rather than silently truncated:
the caller pays per token and should get what it paid for.

Concurrent requests share forward passes through a ``DynamicBatcher``; each
request is charged the share of every batch's busy time that its tokens make up
(``Usage.engine_ms``). The runtime is one hook, ``_load_encoder``: the ONNX
Runtime backend (``onnx_embedder``) reuses everything else.

PyTorch runs a BERT batch packed: several texts share one row of the forward pass,
each attending only to itself (a block-diagonal attention mask) with positions
counted from its own start, so the projections, which are most of the work,
run on the real tokens and little padding. In the bench's batches of 17
single-text requests, 41% of a batch padded to its longest was padding, 22% when
cut into length groups (two forward calls), 11% packed (one call). The ONNX
backend's export takes packed rows too (``onnx_export._pack``).

    backend = SentenceEmbeddingBackend(model_dir, n_threads=2)
    await backend.start()
    result = await backend.embed(["a sentence", "another"])
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
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
    "PackedRows",
    "SentenceEmbeddingBackend",
    "encode_in_length_groups",
    "filler_token",
    "length_groups",
    "load_transformer",
    "pack_rows",
    "pad_batch",
]

# A batch's token ids -> (texts, dim) float32 unit vectors, in the batch's order.
Encoder = Callable[[list[list[int]]], npt.NDArray[np.float32]]


class MeanPooled(torch.nn.Module):
    """The transformer plus the model's pooling: mean over real tokens, then L2 norm.

    ``forward`` takes padded rows, one text each: the ONNX export traces it (and, for
    BERT, rewrites the traced graph to take packed rows), and PyTorch runs it for models
    other than BERT. ``packed`` takes several texts to a row, for BERT on PyTorch; both
    pool alike (``_mean_unit``), and the tests hold them to the same vectors.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # (batch, tokens, dim)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, tokens, 1)
        return _mean_unit((hidden * weights).sum(1), weights.sum(1))

    def packed(self, rows: PackedRows) -> torch.Tensor:
        """The same vectors for texts packed into shared rows (``pack_rows``)."""
        # Additive, as both eager and SDPA attention take it, in the model's own float type
        # (a 4D mask reaches the attention as given).
        dtype = next(self.transformer.parameters()).dtype
        alone = torch.from_numpy(~rows.same_text())  # (rows, width, width)
        mask = torch.zeros(alone.shape, dtype=dtype).masked_fill_(alone, torch.finfo(dtype).min)
        hidden = self.transformer(
            input_ids=torch.from_numpy(rows.ids),
            attention_mask=mask[:, None],  # (rows, 1, width, width): one mask for every head
            position_ids=torch.from_numpy(rows.positions),
        ).last_hidden_state  # (rows, width, dim)
        flat = torch.from_numpy(rows.segments).reshape(-1)  # -1 where unused
        real = flat >= 0
        sums = hidden.new_zeros((len(rows.lengths), hidden.shape[-1]))
        sums.index_add_(0, flat[real], hidden.reshape(-1, hidden.shape[-1])[real])
        return _mean_unit(sums, torch.from_numpy(rows.lengths).to(hidden.dtype)[:, None])


def _mean_unit(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of each text's token states, L2-normalised: (texts, dim) sums, (texts, 1) counts."""
    return torch.nn.functional.normalize(sums / counts.clamp(min=1e-9), p=2.0, dim=1)


@dataclass(frozen=True, slots=True)
class PackedRows:
    """Texts laid out in rows of one width, several to a row, each from position 0."""

    ids: npt.NDArray[np.int64]  # (rows, width) token ids; ``filler`` in unused slots
    positions: npt.NDArray[np.int64]  # (rows, width) position of each token in its text
    segments: npt.NDArray[np.int64]  # (rows, width) which text a slot holds; -1 if none
    lengths: npt.NDArray[np.int64]  # (texts,) tokens per text

    def same_text(self) -> npt.NDArray[np.bool_]:
        """(rows, width, width): where a slot may attend. A token sees the tokens of its
        own text only; unused slots see each other, so no attention row is empty."""
        return self.segments[:, :, None] == self.segments[:, None, :]  # type: ignore[no-any-return]


def pack_rows(batch: list[list[int]], filler: int) -> PackedRows:
    """Pack texts into as few rows as fit, each row as wide as the longest text.

    First-fit decreasing: longest first, each into the first row with room. Rows are
    the longest text wide so attention, which grows with the square of a row's width,
    costs no more than the padded batch's; the projections run on about the real
    tokens only.
    """
    lengths = [len(ids) for ids in batch]
    width = max(max(lengths), 1)
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(batch)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[index]), len(rows))
        if row == len(rows):
            rows.append([])
            room.append(width)
        rows[row].append(index)
        room[row] -= lengths[index]
    ids = np.full((len(rows), width), filler, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    segments = np.full((len(rows), width), -1, dtype=np.int64)
    for row, members in enumerate(rows):
        start = 0
        for index in members:
            end = start + lengths[index]
            ids[row, start:end] = batch[index]
            positions[row, start:end] = np.arange(lengths[index])
            segments[row, start:end] = index
            start = end
    return PackedRows(ids, positions, segments, np.asarray(lengths, dtype=np.int64))


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
    # (Python dispatch through every layer): the price of cutting a padded batch in two.
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
        self._packs = False
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
        # BERT numbers positions from 0 as given, so texts can share rows; RoBERTa-style
        # models count from their padding id + 1, so they keep one text per row.
        self._packs = config.get("model_type") == "bert"
        tokenizer = Tokenizer.from_file(str(self._dir / "tokenizer.json"))
        # Counted exactly and refused when too long: never cut, never padded here.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        # Padded positions (and a packed row's unused slots) are masked out of attention
        # and pooling, so their token never changes a vector; a frequent word keeps their
        # activations in the range of real text, which an int8 model's per-batch
        # quantisation scale depends on ([PAD]'s are far outside it).
        self._filler = filler_token(tokenizer)
        self._encode = self._load_encoder()

    def _load_encoder(self) -> Encoder:
        """The runtime: PyTorch here, ONNX Runtime in the subclass."""
        module = MeanPooled(load_transformer(self._dir))
        threads, filler, overhead = self._threads, self._filler, self.call_overhead_tokens
        packs = self._packs

        def encode(batch: list[list[int]]) -> npt.NDArray[np.float32]:
            # OpenMP keeps the thread count per calling thread: set it where batches run.
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                if packs:
                    return module.packed(pack_rows(batch, filler)).numpy()
                return encode_in_length_groups(batch, filler, overhead, padded)

        def padded(ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
            return module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()  # type: ignore[no-any-return]

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
        encode = self._encode
        assert encode is not None
        return encode(batch).tolist()  # type: ignore[no-any-return]


def encode_in_length_groups(
    batch: list[list[int]],
    filler: int,
    overhead: int,
    forward: Callable[[npt.NDArray[np.int64], npt.NDArray[np.int64]], npt.NDArray[Any]],
) -> npt.NDArray[np.float32]:
    """Vectors of ``batch`` in order, one padded ``forward(ids, mask)`` per length group."""
    groups = length_groups([len(ids) for ids in batch], overhead)
    parts = [(group, forward(*pad_batch([batch[i] for i in group], filler))) for group in groups]
    out = np.empty((len(batch), parts[0][1].shape[1]), dtype=np.float32)
    for group, vectors in parts:
        out[group] = vectors
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
