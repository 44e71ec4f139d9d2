"""Dynamic int8 quantisation of an exported embedding graph, keeping activation outliers
out of the int8 scale (``quantize_int8``), and the choice of int8 kernel for this CPU
(``int8_weight_type``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from modelmint.errors import InvalidRequest
from modelmint.serving.onnx_export import packed_feeds, takes_packed_rows
from modelmint.serving.sentence_embedder import filler_token, pack_rows, pad_batch

__all__ = ["WeightType", "int8_weight_type", "quantize_int8"]

# The int8 weights' sign: which of ONNX Runtime's integer kernels runs (int8_weight_type).
WeightType = Literal["s8", "u8"]
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


def quantize_int8(model_dir: Path, fp32: Path, out: Path, weights: WeightType) -> None:
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
    packed = takes_packed_rows(session)
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
