"""Local embedding backend on ONNX Runtime, optionally with dynamic int8 weights.

The same sentence-transformers folder as the PyTorch backend, exported once to
ONNX (traced from the same ``MeanPooled`` module, pooling and normalisation
included), with BERT's attention, GELU and layer norms fused into ONNX Runtime's
kernels.
A fused BERT graph is then rewritten to take a batch packed as PyTorch runs it
(several texts to a row, each attending only to itself: ``onnx_export``); a graph
that did not fuse takes padded length groups. With ``quantize="int8"`` every
projection gets int8 weights and runs on int8 activations quantised on the fly
(``quantize_dynamic``); see ``onnx_int8`` for how their outlier channels are kept
out of the int8 scale, and what it costs in cosine to the fp32 vectors.

This module is the backend and the cache of exported files. Exports are cached under
``<MODELMINT_HOME>/artifacts/onnx/``, named after a hash of the model folder, the
quantisation (and for int8 the kernel this CPU multiplies exactly with) and the
library versions, and written atomically: a crashed export never leaves a broken file
behind, and concurrent gateway workers at most repeat the work.

    backend = OnnxEmbeddingBackend(model_dir, cache_dir=home / "artifacts" / "onnx",
                                   quantize="int8", n_threads=2)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from modelmint.errors import InvalidRequest
from modelmint.serving.dynamic_batching import BatchLimits
from modelmint.serving.onnx_export import export_onnx, packed_feeds, takes_packed_rows
from modelmint.serving.onnx_int8 import WeightType, int8_weight_type, quantize_int8
from modelmint.serving.sentence_embedder import (
    Encoder,
    SentenceEmbeddingBackend,
    encode_in_length_groups,
    pack_rows,
)

__all__ = [
    "OnnxEmbeddingBackend",
    "Quantization",
    "WeightType",
    "int8_weight_type",
    "onnx_artifact",
    "packed_feeds",
]

log = logging.getLogger(__name__)

Quantization = Literal["none", "int8"]
# Bump when the export recipe changes: cached files from the old recipe are not reused.
_RECIPE = "minilm-onnx-4"


class OnnxEmbeddingBackend(SentenceEmbeddingBackend):
    """``SentenceEmbeddingBackend`` with the forward pass run by ONNX Runtime."""

    # For a graph that takes padded batches (one that did not fuse): a session run costs
    # about as much as this many padded tokens beyond its tokens (one C++ call), the price
    # of cutting a batch into two calls of more even lengths.
    call_overhead_tokens = 24

    def __init__(
        self,
        model_dir: Path,
        *,
        cache_dir: Path,
        n_threads: int,
        quantize: Quantization = "none",
        limits: BatchLimits | None = None,
        model: str = "",
        deployment: str = "",
    ) -> None:
        if quantize not in get_args(Quantization):
            raise InvalidRequest(
                f"quantize must be one of {', '.join(get_args(Quantization))}", param="quantize"
            )
        super().__init__(
            model_dir, n_threads=n_threads, limits=limits, model=model, deployment=deployment
        )
        self._cache_dir = cache_dir
        self.quantize: Quantization = quantize
        self.artifact: Path | None = None

    def _load_encoder(self) -> Encoder:
        import onnxruntime as ort

        self.artifact = onnx_artifact(self._dir, self._cache_dir, self.quantize)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Pool threads spin for work during a run, between its operators (an int8 graph
        # has ~200 short ones), and stop the moment the run returns, leaving the CPU to the
        # event loop that answers this batch while the next one forms. Measured on 2 vCPUs,
        # batches of 17: not spinning at all cost int8 20% (530 vs 660 texts/s) and fp32 7%.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        session = ort.InferenceSession(
            str(self.artifact), options, providers=["CPUExecutionProvider"]
        )

        filler, overhead = self._filler, self.call_overhead_tokens
        if takes_packed_rows(session):

            def encode(batch: list[list[int]]) -> npt.NDArray[np.float32]:
                (vectors,) = session.run(None, packed_feeds(pack_rows(batch, filler)))
                return np.asarray(vectors, dtype=np.float32)

            return encode

        def forward(ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
            (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
            return np.asarray(vectors)

        def padded(batch: list[list[int]]) -> npt.NDArray[np.float32]:
            # Similar lengths share a call, so little of it is padding.
            return encode_in_length_groups(batch, filler, overhead, forward)

        return padded


def onnx_artifact(model_dir: Path, cache_dir: Path, quantize: Quantization) -> Path:
    """The cached ONNX file for ``model_dir``, exported (and quantised) if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{model_dir.name}-{_fingerprint(model_dir)}"
    fp32 = cache_dir / f"{stem}-fp32.onnx"
    if not fp32.exists():
        log.info("exporting %s to ONNX (once) at %s", model_dir, fp32)
        with _atomic(fp32) as scratch:
            export_onnx(model_dir, scratch)
    if quantize == "none":
        return fp32
    weights = int8_weight_type()
    int8 = cache_dir / f"{stem}-int8-{weights}.onnx"
    if not int8.exists():
        log.info("quantising %s to int8 (%s weights, once) at %s", fp32, weights, int8)
        with _atomic(int8) as scratch:
            quantize_int8(model_dir, fp32, scratch, weights)
    return int8


def _fingerprint(model_dir: Path) -> str:
    """A hash of what decides the exported graph: the folder's files and the tools."""
    import onnxruntime
    import torch

    digest = hashlib.sha256(f"{_RECIPE} {torch.__version__} {onnxruntime.__version__}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        if path.suffix in {".md", ".gitattributes"}:
            continue  # documentation does not change the graph
        digest.update(str(path.relative_to(model_dir)).encode())
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _atomic(target: Path) -> Iterator[Path]:
    """A scratch path beside ``target``, renamed onto it only if the block succeeds."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    scratch = Path(name)
    try:
        yield scratch
        scratch.chmod(0o644)  # mkstemp makes it private; the cache is not a secret
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
