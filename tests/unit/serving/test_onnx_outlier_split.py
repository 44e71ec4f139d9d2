"""The int8 recipe's outlier split is an exact rewrite before quantisation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from modelmint.serving import onnx_int8


def _graph(weight: np.ndarray) -> onnx.ModelProto:
    """x -> Gelu -> MatMul(weight) -> y: an FFN-out in miniature."""
    nodes = [
        helper.make_node("Gelu", ["x"], ["h"], "act", domain="com.microsoft"),
        helper.make_node("MatMul", ["h", "w"], ["y"], "ffn_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_split_projection_gives_the_same_product_and_masks_the_widest_channels() -> None:
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(32, 6)).astype(np.float32)
    x = rng.normal(size=(2, 5, 32)).astype(np.float32)
    x[..., [4, 19]] *= 40.0  # two outlier channels
    model = _graph(weight)
    expected = _run(model, x)

    targets = onnx_int8._context_readers(model)
    assert [node.name for node in targets] == ["ffn_out"]
    ranges = {"h": np.abs(x).reshape(-1, 32).max(axis=0)}
    onnx_int8._split_outliers(model, targets, ranges)
    onnx.checker.check_model(model)

    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-4)
    keep = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["ffn_out/keep"]
    assert keep[4] == 0.0 and keep[19] == 0.0
    assert int(keep.sum()) == 32 - onnx_int8._OUTLIER_CHANNELS
    # The node left to quantise reads the masked input, not the raw one.
    (projection,) = [n for n in model.graph.node if n.name == "ffn_out"]
    assert projection.input[0] == "ffn_out/kept"
