"""Local embedding backend on ONNX Runtime, optionally with dynamic int8 weights.

The same sentence-transformers folder as the PyTorch backend, exported once to
ONNX (traced from the same ``MeanPooled`` module, pooling and normalisation
included), with BERT's attention, GELU and layer norms fused into ONNX Runtime's
kernels.
A fused BERT graph is then rewritten to take a batch packed as PyTorch runs it
(several texts to a row, each attending only to itself: ``_pack``); a graph that
did not fuse takes padded length groups. With ``quantize="int8"`` every projection
gets int8 weights and runs on int8 activations quantised on the fly
(``quantize_dynamic``); see ``_quantize`` for how their outlier channels are kept
out of the int8 scale, and what it costs in cosine to the fp32 vectors.

Exports are cached under ``<MODELMINT_HOME>/artifacts/onnx/``, named after a hash
of the model folder, the quantisation (and for int8 the kernel this CPU multiplies
exactly with) and the library versions, and written atomically: a crashed export
never leaves a broken file behind, and concurrent gateway workers at most repeat
the work.

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from modelmint.errors import InvalidRequest
from modelmint.serving.dynamic_batching import BatchLimits
from modelmint.serving.sentence_embedder import (
    Encoder,
    MeanPooled,
    PackedRows,
    SentenceEmbeddingBackend,
    encode_in_length_groups,
    filler_token,
    load_transformer,
    pack_rows,
    pad_batch,
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
# The int8 weights' sign: which of ONNX Runtime's integer kernels runs (int8_weight_type).
WeightType = Literal["s8", "u8"]
# Bump when the export recipe changes: cached files from the old recipe are not reused.
_RECIPE = "minilm-onnx-4"
# The TorchScript exporter's opset: all ONNX Runtime's transformer fusions know it.
# (``_pack`` writes ReduceL2 with an ``axes`` attribute, which opset 18 made an input.)
_OPSET = 17
# SmoothQuant's migration strength: how much of an activation channel's range moves into
# the weights. Measured on all-MiniLM-L6-v2 with every projection int8 (worst text of 512
# over 6 shuffled batchings of 17): 0.6 0.9928, 0.7 0.9927, 0.75 0.9938, 0.8 0.9918,
# 0.85 0.9910, 0.9 0.9906. (With QKV and FFN-in alone int8, 0.85 had been best.)
_SMOOTHING = 0.75
# Input channels of attention-out and FFN-out kept out of int8, per projection: the
# largest by calibration range. Measured on all-MiniLM-L6-v2 over 512 texts, as served:
# quantising both projections plainly leaves the worst text at 0.984 cosine; 8 outlier
# channels (of 384 and 1536) in fp32 bring it to 0.992; 16 or 96 change nothing more.
_OUTLIER_CHANNELS = 8
# Calibration sentences for the smoothing factors: varied in length, topic and form.
# Which channels carry outliers is a property of the model, not of the text, so a
# handful is enough.
_CALIBRATION = (
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Invoice #4521 is due on 3 March 2024.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "I loved the film, but the ending felt rushed.",
    "SELECT name, total FROM orders WHERE total > 100;",
    "Paris",
    "What's the weather like in Tokyo tomorrow?",
    "The committee postponed its decision until further evidence could be gathered "
    "from the field study.",
    "def add(a, b): return a + b",
    "Ceci n'est pas une pipe.",
    "Our quarterly revenue grew 12% year over year, driven by subscriptions.",
    "Please ship the order to 221B Baker Street, London.",
    "Error: connection refused (errno 111)",
    "Thanks!",
    "Neural networks learn representations by adjusting weights to minimise a loss "
    "function over training data.",
)


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
        if _takes_packed_rows(session):

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


def packed_feeds(rows: PackedRows) -> dict[str, npt.NDArray[Any]]:
    """The inputs of a packed graph (``_pack``) for texts laid out by ``pack_rows``."""
    texts = len(rows.lengths)
    mask = rows.same_text().astype(np.int64)  # 1 where a slot may attend
    # Mean pooling as a product: row t holds 1/len(t) at text t's slots.
    mine = rows.segments.reshape(1, -1) == np.arange(texts).reshape(-1, 1)  # (texts, slots)
    pool = mine / np.maximum(rows.lengths, 1).reshape(-1, 1).astype(np.float32)
    return {
        "input_ids": rows.ids,
        "position_ids": rows.positions,
        "attention_mask": mask,
        "pool": pool.astype(np.float32),
    }


def _takes_packed_rows(session: Any) -> bool:
    return "pool" in {i.name for i in session.get_inputs()}


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
    weights = int8_weight_type()
    int8 = cache_dir / f"{stem}-int8-{weights}.onnx"
    if not int8.exists():
        log.info("quantising %s to int8 (%s weights, once) at %s", fp32, weights, int8)
        with _atomic(int8) as scratch:
            _quantize(model_dir, fp32, scratch, weights)
    return int8


def int8_weight_type(cpu_flags: frozenset[str] | None = None) -> WeightType:
    """Signed int8 weights where this CPU multiplies them exactly, unsigned elsewhere.

    ONNX Runtime multiplies uint8 activations by int8 weights with AVX-512 VNNI / AVX-VNNI
    (or AMX) into 32-bit sums. An x86 CPU without those (AVX2 only) has just
    ``vpmaddubsw``, whose pairwise 16-bit sums saturate (255 * 127 * 2 > 32767), so there
    uint8 weights take another kernel with no such limit. Measured on all-MiniLM-L6-v2,
    worst of 512 texts over 4 batchings, 2-vCPU Zen 3 (AVX2): int8 weights 0.983 cosine
    to fp32, int8 with 7-bit weights (``reduce_range``) 0.988, uint8 weights 0.997, which
    runs 1.23x ONNX fp32 there against 1.43x for the saturating int8 kernel. ARM's dot
    product instructions do not saturate either.
    """
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    x86 = "sse2" in flags
    exact = {"avx512_vnni", "avx_vnni", "amx_int8"} & flags
    return "u8" if x86 and not exact else "s8"


def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    return frozenset()


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


def _export(model_dir: Path, out: Path) -> None:
    """Trace ``MeanPooled`` to ONNX, then fuse BERT's blocks into ORT's kernels and take
    packed rows (``_fuse``, ``_pack``)."""
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
    """Fuse attention, GELU and layer norms in place, then rewrite the fused graph to take
    packed rows; a graph it cannot fuse stays as traced (padded)."""
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
    layers, hidden_size = int(config["num_hidden_layers"]), int(config["hidden_size"])
    if not _pack(fused.model, layers, hidden_size):
        log.warning("%s: not fully fused; its ONNX graph takes padded batches", model_dir.name)
    fused.save_model_to_file(str(path))


def _pack(model: Any, layers: int, hidden_size: int) -> bool:
    """Rewrite a fused BERT graph to take texts packed into shared rows, as PyTorch runs
    them (``MeanPooled.packed``); False, unchanged, where the graph is not wholly fused
    (a layer left unfused would still build its own mask from a 2D ``attention_mask``).

    Inputs become ``input_ids`` and ``position_ids`` (rows, width), each text's positions
    from 0; ``attention_mask`` (rows, width, width), 1 where a token may attend, which the
    fused ``Attention`` kernels take as given (block-diagonal: each text sees itself); and
    ``pool`` (texts, rows * width), the weights of each text's mean. The traced padded
    pooling is replaced by ``pool @ hidden`` and L2 normalisation.
    """
    from onnx import ModelProto, TensorProto, helper, numpy_helper

    graph = ModelProto()
    graph.CopyFrom(model)
    nodes = list(graph.graph.node)
    embed = [n for n in nodes if n.op_type == "EmbedLayerNormalization"]
    attention = [n for n in nodes if n.op_type == "Attention"]
    norms = [n for n in nodes if n.op_type == "SkipLayerNormalization"]
    if len(embed) != 1 or len(attention) != layers or len(norms) != 2 * layers:
        return False
    hidden = norms[-1].output[0]  # the last encoder layer's output, (rows, width, dim)
    (embed_node,) = embed
    # Inputs 7 and 8 of EmbedLayerNormalization: the 2D mask (not needed now) and position ids.
    del embed_node.input[7:]
    embed_node.input.extend(["", "pack/position_ids_int32"])
    for node in attention:
        node.input[3] = "pack/mask_int32"
    head = [
        helper.make_node(
            "Cast",
            ["position_ids"],
            ["pack/position_ids_int32"],
            "pack/Positions",
            to=TensorProto.INT32,
        ),
        helper.make_node(
            "Cast", ["attention_mask"], ["pack/mask_int32"], "pack/Mask", to=TensorProto.INT32
        ),
    ]
    graph.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1, hidden_size], np.int64), "pack/flat_shape"),
            numpy_helper.from_array(np.array(1e-12, np.float32), "pack/epsilon"),
        ]
    )
    tail = [
        helper.make_node("Reshape", [hidden, "pack/flat_shape"], ["pack/tokens"], "pack/Flat"),
        helper.make_node("MatMul", ["pool", "pack/tokens"], ["pack/mean"], "pack/Pool"),
        helper.make_node("ReduceL2", ["pack/mean"], ["pack/norm"], "pack/Norm", axes=[1]),
        helper.make_node("Max", ["pack/norm", "pack/epsilon"], ["pack/norm_floor"], "pack/Floor"),
        helper.make_node("Div", ["pack/mean", "pack/norm_floor"], ["embedding"], "pack/Unit"),
    ]
    # Keep only what the new output needs: the traced pooling and mask plumbing go.
    needed, kept = {"embedding"}, []
    for node in reversed(head + [n for n in nodes if "embedding" not in n.output] + tail):
        if needed & set(node.output):
            kept.append(node)
            needed |= {name for name in node.input if name}
    del graph.graph.node[:]
    graph.graph.node.extend(reversed(kept))
    initializers = [i for i in graph.graph.initializer if i.name in needed]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(initializers)
    value = helper.make_tensor_value_info
    del graph.graph.input[:]
    graph.graph.input.extend(
        [
            value("input_ids", TensorProto.INT64, ["rows", "width"]),
            value("position_ids", TensorProto.INT64, ["rows", "width"]),
            value("attention_mask", TensorProto.INT64, ["rows", "width", "width"]),
            value("pool", TensorProto.FLOAT, ["texts", "slots"]),
        ]
    )
    del graph.graph.output[:]
    graph.graph.output.append(value("embedding", TensorProto.FLOAT, ["texts", hidden_size]))
    readers = {n.name for n in graph.graph.node for name in n.input if name == "attention_mask"}
    if readers != {"pack/Mask"}:
        return False  # something else still reads the mask as the traced 2D one
    model.CopyFrom(graph)
    return True


def _quantize(model_dir: Path, fp32: Path, out: Path, weights: WeightType) -> None:
    """Dynamic int8 for every projection, each input made to fit one int8 scale first.

    Plain ``quantize_dynamic`` of every matrix product drops the cosine to the fp32
    vectors to ~0.98 for some texts: activations get one int8 scale per tensor, and a
    few channels are ~20x larger than the rest. So, before quantising:
    - the QKV and FFN-in projections, which read a LayerNorm output, are smoothed
      (SmoothQuant): each input channel is divided by a factor and the matching weight
      row multiplied by it (an exact identity in fp32), the factors set from activation
      ranges on a few calibration sentences, so that the int8 scale fits every channel;
    - attention-out and FFN-out, which read the attention context and GELU outputs
      (one-sided, heavy-tailed: smoothing alone left 0.92-0.96), have their few widest
      input channels split off (LLM.int8()-style): those channels are multiplied by
      their weight rows in fp32, the rest, with the outliers masked to zero, in int8,
      and the two results added.
    The worst of the bench's 512 texts then keeps ~0.994 cosine to fp32, and every
    projection runs in int8: ~1.8x ONNX fp32 on a 2-vCPU AVX-512 VNNI machine (1.2x on an
    AVX2-only one, whose exact kernel is slower: ``int8_weight_type``), against
    ~1.4x when attention-out and FFN-out stayed fp32 (docs/benchmarks.md, session 6).
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32))
    smoothed = _projections(graph)
    split = _context_readers(graph)
    if not smoothed:
        raise InvalidRequest(
            f"int8 needs a BERT-like model whose attention ONNX Runtime fuses; {model_dir.name} "
            "is not one (deploy it with quantize none)",
            param="quantize",
        )
    ranges = _input_ranges(model_dir, fp32, sorted({n.input[0] for n in smoothed + split}))
    _smooth(graph, smoothed, ranges)
    _split_outliers(graph, split, ranges)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch, _quiet_root_logger():
        prepared = Path(scratch) / "prepared.onnx"
        onnx.save(graph, str(prepared))
        quantize_dynamic(
            prepared,
            out,
            nodes_to_quantize=[node.name for node in smoothed + split],
            per_channel=True,
            weight_type=QuantType.QInt8 if weights == "s8" else QuantType.QUInt8,
            # The fused ops (com.microsoft domain) defeat ONNX shape inference; their
            # outputs are float tensors.
            extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT
        )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser logs a line per tensor (INFO) and advice (WARNING) on the
    root logger; it runs once per cached file, at start, for a few seconds."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _projections(graph: Any) -> list[Any]:
    """Nodes whose input is a LayerNorm output: fused attention (QKV) and FFN-in MatMuls."""
    weights = {init.name for init in graph.graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in graph.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    gelu = {"Gelu", "BiasGelu", "FastGelu"}
    return [
        node
        for node in graph.graph.node
        if node.op_type == "Attention"
        or (
            node.op_type == "MatMul"
            and node.input[1] in weights
            and gelu & set(readers.get(node.output[0], ()))
        )
    ]


def _context_readers(graph: Any) -> list[Any]:
    """MatMuls with a constant weight that read the attention context (attention-out)
    or a GELU output (FFN-out)."""
    weights = {init.name for init in graph.graph.initializer}
    producers = {name: node.op_type for node in graph.graph.node for name in node.output}
    context = {"Attention", "Gelu", "BiasGelu", "FastGelu"}
    return [
        node
        for node in graph.graph.node
        if node.op_type == "MatMul"
        and node.input[1] in weights
        and producers.get(node.input[0]) in context
    ]


def _input_ranges(model_dir: Path, fp32: Path, names: list[str]) -> dict[str, Any]:
    """Per-channel max |x| of each named tensor over the calibration sentences, alone and
    batched as served (packed or padded, as the graph takes them)."""
    import onnx
    import onnxruntime as ort
    from tokenizers import Tokenizer

    probe = onnx.load(str(fp32))
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    tokens = [e.ids for e in tokenizer.encode_batch(list(_CALIBRATION))]
    # Alone and batched (packed or padded, as this graph takes them): serving does both.
    batches = [[t] for t in tokens] + [tokens[i : i + 8] for i in range(0, len(tokens), 8)]
    filler = filler_token(tokenizer)
    packed = _takes_packed_rows(session)
    ranges: dict[str, Any] = {}
    for batch in batches:
        if packed:
            feeds = packed_feeds(pack_rows(batch, filler))
        else:
            ids, mask = pad_batch(batch, filler)
            feeds = {"input_ids": ids, "attention_mask": mask}
        outputs = session.run(names, feeds)
        for name, value in zip(names, outputs, strict=True):
            peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)  # (channels,)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


def _smooth(graph: Any, targets: list[Any], ranges: dict[str, Any]) -> None:
    """Insert ``x * (1/s)`` before each target and scale its weight rows by ``s``."""
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in graph.graph.initializer}

    def smoothed(node: Any) -> list[Any]:
        weight = numpy_helper.to_array(weights[node.input[1]])  # (in, out)
        act = np.maximum(ranges[node.input[0]], 1e-5)
        row = np.maximum(np.abs(weight).max(axis=1), 1e-5)
        scale = (act**_SMOOTHING / row ** (1 - _SMOOTHING)).astype(np.float32)  # (in,)
        weights[node.input[1]].CopyFrom(
            numpy_helper.from_array(weight * scale[:, None], node.input[1])
        )
        graph.graph.initializer.append(
            numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{node.name}/smooth")
        )
        x, node.input[0] = node.input[0], f"{node.name}/smoothed_input"
        mul = helper.make_node(
            "Mul", [x, f"{node.name}/smooth"], [node.input[0]], f"{node.name}/Mul"
        )
        return [mul, node]

    _rewrite(graph, targets, smoothed)


def _split_outliers(graph: Any, targets: list[Any], ranges: dict[str, Any]) -> None:
    """Rewrite each ``y = x @ W`` as ``(x * keep) @ W + x[..., wide] @ W[wide]``.

    ``wide`` are the ``_OUTLIER_CHANNELS`` input channels of largest calibration range
    and ``keep`` is 0 on them, 1 elsewhere: the first product (the node itself, to be
    quantised) never sees an outlier, the second stays fp32 and is tiny.
    """
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in graph.graph.initializer}

    def split(node: Any) -> list[Any]:
        name, x, y = node.name, node.input[0], node.output[0]
        span = ranges[x]
        wide = np.argsort(-span)[:_OUTLIER_CHANNELS].astype(np.int64)
        keep = np.ones(span.shape, dtype=np.float32)
        keep[wide] = 0.0
        weight = numpy_helper.to_array(weights[node.input[1]])  # (in, out)
        graph.graph.initializer.extend(
            [
                numpy_helper.from_array(keep, f"{name}/keep"),
                numpy_helper.from_array(wide, f"{name}/wide"),
                numpy_helper.from_array(weight[wide], f"{name}/wide_weight"),
            ]
        )
        node.input[0], node.output[0] = f"{name}/kept", f"{name}/int8_part"
        return [
            helper.make_node("Mul", [x, f"{name}/keep"], [f"{name}/kept"], f"{name}/Keep"),
            node,
            helper.make_node(
                "Gather", [x, f"{name}/wide"], [f"{name}/wide_x"], f"{name}/Wide", axis=-1
            ),
            helper.make_node(
                "MatMul",
                [f"{name}/wide_x", f"{name}/wide_weight"],
                [f"{name}/fp32_part"],
                f"{name}/WideMatMul",
            ),
            helper.make_node(
                "Add", [f"{name}/int8_part", f"{name}/fp32_part"], [y], f"{name}/Join"
            ),
        ]

    _rewrite(graph, targets, split)


def _rewrite(graph: Any, targets: list[Any], replace: Callable[[Any], list[Any]]) -> None:
    """Put ``replace(node)`` (the node, edited, among new ones) in place of each target,
    keeping the graph's order (ONNX wants producers before consumers)."""
    chosen = {node.name for node in targets}
    nodes: list[Any] = []
    for node in graph.graph.node:
        nodes.extend(replace(node) if node.name in chosen else [node])
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
