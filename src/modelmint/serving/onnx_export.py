"""Export of a sentence-transformers folder to ONNX, fused and taking packed rows.

The graph is traced from ``MeanPooled`` (pooling and normalisation included), BERT's
attention, GELU and layer norms are fused into ONNX Runtime's kernels, and a fused graph
is rewritten to take a batch packed as PyTorch runs it (several texts to a row, each
attending only to itself: ``_pack``); ``packed_feeds`` builds its inputs. A graph that
did not fuse stays as traced and takes padded batches.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelmint.serving.sentence_embedder import MeanPooled, PackedRows, load_transformer

__all__ = ["export_onnx", "packed_feeds", "takes_packed_rows"]

log = logging.getLogger(__name__)

# The TorchScript exporter's opset: all ONNX Runtime's transformer fusions know it.
# (``_pack`` writes ReduceL2 with an ``axes`` attribute, which opset 18 made an input.)
_OPSET = 17


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


def takes_packed_rows(session: Any) -> bool:
    return "pool" in {i.name for i in session.get_inputs()}


def export_onnx(model_dir: Path, out: Path) -> None:
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
