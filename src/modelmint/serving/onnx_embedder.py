"""Local embedding backend on ONNX Runtime, optionally with dynamic int8 weights.

The same sentence-transformers folder as the PyTorch backend, exported once to
ONNX (pooling and normalisation included, from the same ``MeanPooled`` module),
with BERT's attention, GELU and layer norms fused into ONNX Runtime's kernels; with
``quantize="int8"`` the weights of every matrix product are then stored as int8 and
activations are quantised on the fly (``quantize_dynamic``), which roughly halves
the work of a forward pass on a CPU for a cosine of ~0.99+ to the fp32 vectors.

Exports are cached under ``<MODELMINT_HOME>/artifacts/onnx/``, named after a hash
of the model folder, the quantisation and the library versions, and written
atomically: a crashed export never leaves a broken file behind, and concurrent
gateway workers at most repeat the work.

    backend = OnnxEmbeddingBackend(model_dir, cache_dir=home / "artifacts" / "onnx",
                                   quantize="int8", n_threads=2)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from modelmint.errors import InvalidRequest
from modelmint.serving.dynamic_batching import BatchLimits
from modelmint.serving.sentence_embedder import (
    Encoder,
    MeanPooled,
    SentenceEmbeddingBackend,
    load_transformer,
)

__all__ = ["Quantization", "OnnxEmbeddingBackend", "onnx_artifact"]

log = logging.getLogger(__name__)

Quantization = Literal["none", "int8"]
# Bump when the export recipe changes: cached files from the old recipe are not reused.
_RECIPE = "minilm-onnx-1"
# The TorchScript exporter's opset: all ONNX Runtime's transformer fusions know it.
_OPSET = 17


class OnnxEmbeddingBackend(SentenceEmbeddingBackend):
    """``SentenceEmbeddingBackend`` with the forward pass run by ONNX Runtime."""

    # An ONNX Runtime call is one C++ call, not a Python walk through the layers.
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
        # Idle pool threads would otherwise spin for work, taking the CPU the event loop
        # needs to answer the previous batch while this one computes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(self.artifact), options, providers=["CPUExecutionProvider"]
        )

        def encode(
            ids: npt.NDArray[np.int64], mask: npt.NDArray[np.int64]
        ) -> npt.NDArray[np.float32]:
            (vectors,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
            return np.asarray(vectors, dtype=np.float32)

        return encode


def onnx_artifact(model_dir: Path, cache_dir: Path, quantize: Quantization) -> Path:
    """The cached ONNX file for ``model_dir``, exported (and quantised) if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{model_dir.name}-{_fingerprint(model_dir)}"
    fp32 = cache_dir / f"{stem}-fp32.onnx"
    if not fp32.exists():
        log.info("exporting %s to ONNX (once) at %s", model_dir, fp32)
        with _atomic(fp32) as scratch:
            _export(model_dir, scratch)
    if quantize == "none":
        return fp32
    int8 = cache_dir / f"{stem}-int8.onnx"
    if not int8.exists():
        log.info("quantising %s to int8 (once) at %s", fp32, int8)
        with _atomic(int8) as scratch:
            _quantize(fp32, scratch)
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
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)


def _export(model_dir: Path, out: Path) -> None:
    """Trace ``MeanPooled`` to ONNX, then fuse BERT's blocks into ORT's kernels."""
    import torch

    # Eager attention traces to plain MatMul/Softmax, the pattern ORT's attention fusion
    # recognises; the SDPA path traces to a form it does not fuse.
    module = MeanPooled(load_transformer(model_dir, attn_implementation="eager"))
    example = torch.ones((2, 8), dtype=torch.int64)
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings():
        # The tracer warns about shape-dependent Python branches BERT takes the same
        # way for every input; the dynamo exporter is slower and its graph not fused.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example, example),
            str(out),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
            opset_version=_OPSET,
            dynamo=False,
        )
    _fuse(model_dir, out)


def _fuse(model_dir: Path, path: Path) -> None:
    """Fuse attention, GELU and layer norms in place; a graph it cannot fuse stays as is."""
    from onnxruntime.transformers.optimizer import optimize_model

    config: dict[str, Any] = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert":
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimize_model(
            str(path),
            model_type="bert",
            num_heads=int(config["num_attention_heads"]),
            hidden_size=int(config["hidden_size"]),
            # Fusions only: the hardware-specific rewrites happen when a session loads it.
            opt_level=0,
        )
    fused.save_model_to_file(str(path))


def _quantize(fp32: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        fp32,
        out,
        weight_type=QuantType.QInt8,
        # The fused ops (com.microsoft domain) defeat ONNX shape inference; their
        # outputs are float tensors.
        extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
    )
