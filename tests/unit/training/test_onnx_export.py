"""ONNX export with a parity check: an MLP recipe, a CNN with BatchNorm and an
embedding model with integer inputs, each run in onnxruntime on two batch sizes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from modelmint.training.onnx_export import OnnxParityError, export_onnx
from modelmint.training.recipe import DataError
from tests.unit.training.test_evaluation import LogisticRecipe, breast_cancer


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny networks on a shared 2-core machine: a second torch thread only contends.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Backed:
    """The TorchBacked protocol around any module and example batch."""

    def __init__(self, module: nn.Module, *inputs: torch.Tensor) -> None:
        self.module = module.eval()
        self.inputs = inputs

    def torch_module(self) -> nn.Module:
        return self.module

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return self.inputs

    def use_module(self, module: nn.Module) -> None:
        self.module = module


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv(images)))  # (batch, 6, 8, 8)
        return self.head(self.pool(x).flatten(1))  # (batch, 10)


class MatrixFactorisation(nn.Module):
    def __init__(self, users: int = 20, items: int = 30, factors: int = 4) -> None:
        super().__init__()
        self.user = nn.Embedding(users, factors)
        self.item = nn.Embedding(items, factors)
        self.user_bias = nn.Embedding(users, 1)
        self.item_bias = nn.Embedding(items, 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.user(users) * self.item(items)).sum(-1)  # (batch,)
        return dot + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.tanh(self.body(x))
        return self.head(hidden), hidden


class Drifting(nn.Module):
    """Its output depends on Python state that a traced graph freezes: each call
    scales by how often it was called, so the ONNX file cannot match torch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.linear(x) * float(self.calls)


class Branching(nn.Module):
    """Python control flow on a tensor value: torch.export refuses it, the TorchScript
    tracer bakes in the branch the examples take."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().sum() > 0:
            return self.linear(x)
        return -self.linear(x)


class NotATensor(nn.Module):
    def forward(self, x: torch.Tensor) -> str:
        return "no"


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return list(session.run(None, feeds))


def test_mlp_recipe_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    recipe = LogisticRecipe(hidden=16, epochs=5).fit(breast_cancer())
    report = export_onnx(recipe, tmp_path / "model.onnx")
    assert report.path == tmp_path / "model.onnx"
    assert report.path.stat().st_size == report.size_bytes
    assert report.exporter == "dynamo"
    assert report.opset >= 17
    assert report.input_names == ["input"]  # nn.Sequential.forward(input)
    assert report.output_names == ["output"]
    assert report.batch_sizes == [32, 48]
    assert 0 <= report.max_abs_diff <= report.tolerance
    # An independent run at a third batch size gives torch's numbers.
    x = torch.randn(5, 30)
    expected = recipe.torch_module()(x).detach().numpy()
    (got,) = _run(report.path, {"input": x.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cnn_with_batchnorm_statistics_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cnn = SmallCNN()
    with torch.no_grad():  # learned-looking statistics, so BatchNorm does real work
        cnn.norm.running_mean.uniform_(-0.5, 0.5)
        cnn.norm.running_var.uniform_(0.5, 2.0)
        cnn.norm.weight.uniform_(0.5, 1.5)
    backed = Backed(cnn, torch.randn(6, 1, 8, 8))
    report = export_onnx(backed, tmp_path / "cnn.onnx")
    assert report.input_names == ["images"]
    assert report.batch_sizes == [6, 9]
    assert report.max_abs_diff <= 1e-5
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch axis
    assert session.get_inputs()[0].shape[1:] == [1, 8, 8]


def test_embedding_model_with_integer_inputs_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    users = torch.randint(0, 20, (10,))
    items = torch.randint(0, 30, (10,))
    backed = Backed(MatrixFactorisation(), users, items)
    report = export_onnx(backed, tmp_path / "mf.onnx")
    assert report.input_names == ["users", "items"]
    assert report.batch_sizes == [10, 15]
    assert report.max_abs_diff <= 1e-5
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(int64)"]
    one_user = {"users": np.array([3], dtype=np.int64), "items": np.array([7], dtype=np.int64)}
    (score,) = session.run(None, one_user)
    expected = backed.module(torch.tensor([3]), torch.tensor([7])).detach().numpy()
    np.testing.assert_allclose(score, expected, atol=1e-6)


def test_a_single_row_example_still_gives_a_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(2)
    backed = Backed(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.randn(1, 4))
    report = export_onnx(backed, tmp_path / "one.onnx")
    assert report.batch_sizes == [1, 2]
    (got,) = _run(report.path, {"input": np.ones((7, 4), dtype=np.float32)})
    assert got.shape == (7, 3)


def test_every_output_of_a_multi_output_network_is_checked(tmp_path: Path) -> None:
    torch.manual_seed(3)
    backed = Backed(TwoHeads(), torch.randn(4, 5))
    report = export_onnx(backed, tmp_path / "two.onnx")
    assert report.output_names == ["output_0", "output_1"]
    logits, hidden = _run(report.path, {"x": np.zeros((2, 5), dtype=np.float32)})
    assert logits.shape == (2, 3)
    assert hidden.shape == (2, 8)


def test_a_fixed_batch_export_checks_one_batch_size(tmp_path: Path) -> None:
    torch.manual_seed(4)
    backed = Backed(nn.Linear(3, 2), torch.randn(4, 3))
    report = export_onnx(backed, tmp_path / "fixed.onnx", dynamic_batch=False)
    assert report.batch_sizes == [4]
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 3]


def test_a_graph_that_disagrees_with_torch_is_an_error(tmp_path: Path) -> None:
    torch.manual_seed(5)
    backed = Backed(Drifting(), torch.randn(4, 3))
    with pytest.raises(OnnxParityError, match=r"differs from torch by .* \(tolerance 0\.0001\)"):
        export_onnx(backed, tmp_path / "drift.onnx")


@pytest.mark.slow  # torch.export tries three capture strategies before giving up (~15 s)
def test_an_uncapturable_network_falls_back_to_tracing_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(7)
    backed = Backed(Branching(), torch.randn(4, 3))
    report = export_onnx(backed, tmp_path / "branch.onnx")
    assert report.exporter == "torchscript"
    assert report.max_abs_diff <= 1e-5
    assert "torch.export could not capture" in report.notes[0]
    assert any("might not generalize" in note for note in report.notes)


def test_outputs_that_are_not_tensors_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="returns str"):
        export_onnx(Backed(NotATensor(), torch.zeros(2, 2)), tmp_path / "x.onnx")


def test_report_is_json_ready(tmp_path: Path) -> None:
    torch.manual_seed(6)
    report = export_onnx(Backed(nn.Linear(2, 2), torch.randn(3, 2)), tmp_path / "r.onnx")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["path"] == str(tmp_path / "r.onnx")
    assert data["max_abs_diff"] == report.max_abs_diff
