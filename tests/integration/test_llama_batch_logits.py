"""llama.cpp as ModelMint builds it: a sequence's logits do not depend on its batch.

The batched engine promises that a request answers the same alone or beside others.
Greedy tokens (tests/integration/test_llama_batch_engine.py) would hide a small drift;
this compares the logits themselves, to the last bit, at every step. Batches of two,
four and eight sequences decode with the Q4_1 matrix products in 2x2 tiles (the patch
in scripts/llama-cpp-patches/); a batch of three and a lone sequence decode one column
at a time. A tile that summed in another order than the single column would fail here.
(Sequence ids are consecutive in each batch: with a KV stream per sequence, llama.cpp
computes only consecutive ids together, and [2, 5, 7] would run as three lone ones.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from modelmint.serving.artifacts import resolve_artifact
from tests.support.llama import MODEL, THREADS
from tests.support.llama import PROMPTS as ALL_PROMPTS

pytestmark = pytest.mark.slow

PROMPTS = ALL_PROMPTS[:8]
STEPS = 5  # greedy steps after the prompt; logits are compared at each


@pytest.fixture(scope="module")
def model() -> Iterator[Any]:
    import llama_cpp as lc
    from llama_cpp._internals import LlamaModel
    from llama_cpp._logger import set_verbose

    set_verbose(False)
    lc.llama_backend_init()
    loaded = LlamaModel(
        path_model=str(resolve_artifact(MODEL)),
        params=lc.llama_model_default_params(),
        verbose=False,
    )
    yield loaded
    loaded.close()


def _logits_per_step(model: Any, seqs: list[int]) -> dict[int, list[npt.NDArray[np.float32]]]:
    """Decode the prompts of ``seqs`` together, then STEPS greedy steps of all of them."""
    import llama_cpp as lc

    params = lc.llama_context_default_params()
    params.n_seq_max = len(PROMPTS)
    params.n_ctx = len(PROMPTS) * 256
    params.kv_unified = False
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = THREADS
    params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = lc.llama_init_from_model(model.model, params)
    batch = lc.llama_batch_init(512, 0, 1)
    n_vocab = lc.llama_vocab_n_tokens(model.vocab)
    try:
        entries: list[tuple[int, int, int, bool]] = []  # (token, position, seq, wants logits)
        for seq in seqs:
            tokens = model.tokenize(PROMPTS[seq].encode(), True, False)
            entries += [(t, i, seq, i == len(tokens) - 1) for i, t in enumerate(tokens)]
        seen: dict[int, list[npt.NDArray[np.float32]]] = {seq: [] for seq in seqs}
        for _ in range(STEPS + 1):
            for n, (token, pos, seq, wants) in enumerate(entries):
                batch.token[n], batch.pos[n], batch.logits[n] = token, pos, wants
                batch.n_seq_id[n], batch.seq_id[n][0] = 1, seq
            batch.n_tokens = len(entries)
            assert lc.llama_decode(ctx, batch) == 0
            following = []
            for n, (_, pos, seq, wants) in enumerate(entries):
                if wants:
                    row = lc.llama_get_logits_ith(ctx, n)
                    logits = np.ctypeslib.as_array(row, shape=(n_vocab,)).copy()
                    seen[seq].append(logits)
                    following.append((int(logits.argmax()), pos + 1, seq, True))
            entries = following
        return seen
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)


def test_logits_are_bitwise_the_same_alone_and_in_batches_of_any_size(model: Any) -> None:
    alone = {seq: _logits_per_step(model, [seq])[seq] for seq in range(len(PROMPTS))}
    for seqs in ([0, 1], [2, 3, 4], [0, 1, 2, 3], list(range(len(PROMPTS)))):
        together = _logits_per_step(model, seqs)
        for seq in seqs:
            assert len(together[seq]) == STEPS + 1
            for step, (mine, solo) in enumerate(zip(together[seq], alone[seq], strict=True)):
                assert np.array_equal(mine, solo), (
                    f"prompt {seq}, step {step}, batch {seqs}: logits differ by up to "
                    f"{float(np.abs(mine - solo).max()):g}"
                )


def test_the_installed_llama_cpp_carries_modelmints_patches() -> None:
    """A stock wheel (built without scripts/llama-wheel.sh) would pass the test above
    without running a single 2x2 tile; the patch names itself in the library it builds."""
    import llama_cpp

    libraries = list((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu*.so*"))
    assert libraries, "llama_cpp ships no libggml-cpu library"
    wanted = b"modelmint-patches: q4_1-avx2-2x2-tile"
    assert any(wanted in library.read_bytes() for library in libraries), (
        "llama-cpp-python was not built by scripts/llama-wheel.sh (run `make venv`)"
    )
