"""Packing a batch's texts into shared rows for the PyTorch embedding forward pass."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from modelmint.serving.onnx_embedder import packed_feeds
from modelmint.serving.sentence_embedder import MeanPooled, pack_rows, pad_batch

FILLER = 1996


def test_each_text_lies_whole_in_one_row_from_position_zero() -> None:
    batch = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15], [16, 17, 18, 19]]
    rows = pack_rows(batch, FILLER)
    assert rows.ids.shape[1] == 5  # as wide as the longest text
    assert rows.lengths.tolist() == [3, 1, 5, 2, 4]
    for index, tokens in enumerate(batch):
        row, cols = np.nonzero(rows.segments == index)
        assert len(set(row.tolist())) == 1, f"text {index} split across rows"
        assert rows.ids[row, cols].tolist() == tokens
        assert rows.positions[row, cols].tolist() == list(range(len(tokens)))
    unused = rows.segments == -1
    assert (rows.ids[unused] == FILLER).all()


def test_first_fit_decreasing_fills_rows() -> None:
    # 5 | 4+1 | 3+2: three rows of five, no unused slot.
    rows = pack_rows([[1] * n for n in (1, 2, 3, 4, 5)], FILLER)
    assert rows.ids.shape == (3, 5)
    assert (rows.segments >= 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_packing_never_needs_more_slots_than_padding(seed: int) -> None:
    rng = random.Random(seed)
    batch = [[7] * rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
    rows = pack_rows(batch, FILLER)
    longest = max(len(t) for t in batch)
    assert rows.ids.shape[1] == longest
    assert int((rows.segments >= 0).sum()) == sum(len(t) for t in batch)
    # First-fit decreasing never leaves two rows that could have been one.
    used = sorted(int((rows.segments[r] >= 0).sum()) for r in range(rows.ids.shape[0]))
    assert len(used) < 2 or used[0] + used[1] > longest


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_rows_give_each_texts_own_vector(attention: str) -> None:
    """Packed (several texts a row, block-diagonal mask) == padded (one text a row)."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=3000,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation=attention,
    )
    module = MeanPooled(BertModel(config, add_pooling_layer=False).eval())
    rng = random.Random(1)
    batch = [[rng.randrange(3000) for _ in range(rng.randint(1, 30))] for _ in range(13)]
    with torch.inference_mode():
        packed = module.packed(pack_rows(batch, FILLER)).numpy()
        ids, mask = pad_batch(batch, FILLER)
        padded = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert pack_rows(batch, FILLER).ids.shape[0] < len(batch)  # texts did share rows
    np.testing.assert_allclose(packed, padded, atol=2e-6)


def test_packed_feeds_pool_each_text_over_its_own_slots() -> None:
    batch = [[5, 6, 7], [8], [9, 10], [11, 12, 13]]
    rows = pack_rows(batch, FILLER)
    feeds = packed_feeds(rows)
    pool, mask = feeds["pool"], feeds["attention_mask"]
    assert pool.shape == (len(batch), rows.ids.size) and pool.dtype == np.float32
    np.testing.assert_allclose(pool.sum(axis=1), 1.0, rtol=1e-6)
    for index, tokens in enumerate(batch):
        mine = rows.segments.reshape(-1) == index
        assert (pool[index, mine] == np.float32(1 / len(tokens))).all()
        assert (pool[index, ~mine] == 0).all()
    # Block-diagonal: a slot attends exactly to the slots of its own text (or unused ones).
    same = rows.segments[:, :, None] == rows.segments[:, None, :]
    assert mask.shape == same.shape and (mask.astype(bool) == same).all()
    assert feeds["input_ids"] is rows.ids and feeds["position_ids"] is rows.positions
