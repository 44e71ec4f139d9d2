"""Quantization and pruning of a fitted torch recipe: measured before/after, and the
recipe left as it was unless asked to keep the compressed network."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from modelmint.training.compression import (
    CompressionReport,
    latency_ms,
    prune_magnitude,
    quantize_dynamic_int8,
    serialized_size,
    torch_recipe,
    weight_sparsity,
)
from modelmint.training.recipe import DataError
from tests.unit.training.test_evaluation import LogisticRecipe, Table, breast_cancer


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny networks on a shared 2-core machine: a second torch thread only contends.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fitted() -> tuple[LogisticRecipe, Table]:
    recipe = LogisticRecipe(hidden=256, epochs=40, lr=0.3, seed=0)
    parts = recipe.split(breast_cancer())
    recipe.fit(parts.train)
    return recipe, parts.test


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


class ConvRecipe:
    """A minimal TorchBacked recipe around a small CNN (compression only needs the
    protocol plus evaluate), scored by how close it stays to its original outputs."""

    name: ClassVar[str] = "test-conv"
    primary_metric: ClassVar[str] = "agreement"

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.module = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Flatten(),
            nn.Linear(8 * 6 * 6, 4),
        ).eval()
        self.reference = self.module(*self.example_inputs()).detach()

    def evaluate(self, data: Any) -> dict[str, Any]:
        with torch.inference_mode():
            out = self.module(*self.example_inputs())
        return {"agreement": float((out.argmax(1) == self.reference.argmax(1)).float().mean())}

    def torch_module(self) -> nn.Module:
        return self.module

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.randn(16, 1, 6, 6, generator=torch.Generator().manual_seed(1)),)

    def use_module(self, module: nn.Module) -> None:
        self.module = module


class EmbeddingOnly(ConvRecipe):
    def __init__(self) -> None:
        self.module = nn.EmbeddingBag(10, 4).eval()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return (torch.tensor([[1, 2], [3, 4]]),)


# ------------------------------------------------------------------ quantization


def test_int8_quantization_is_measured_and_the_recipe_restored(
    fitted: tuple[LogisticRecipe, Table],
) -> None:
    recipe, test = fitted
    original = recipe.torch_module()
    weights = _weights(original)
    before = recipe.evaluate(test)

    report = quantize_dynamic_int8(recipe, test, repeats=10)

    assert report.method == "dynamic-int8"
    assert report.metric == "accuracy"
    assert report.metric_before == before["accuracy"]
    assert report.metric_after is not None
    assert report.metric_before is not None
    assert abs(report.metric_after - report.metric_before) <= 0.03
    assert report.metrics_after["per_class.1.support"] == before["per_class"]["1"]["support"]
    assert report.layers == 2
    assert report.sparsity is None
    # 30x256 + 256x2 float32 weights stored as int8: well under half the bytes.
    assert report.size_bytes_after < 0.5 * report.size_bytes_before
    assert report.latency_ms_before > 0
    assert report.latency_ms_after > 0
    assert report.batch_size == 32
    assert report.threads == 1
    assert report.kept is False
    # The recipe predicts with the very same float network again.
    assert recipe.torch_module() is original
    assert all(torch.equal(weights[k], v) for k, v in original.state_dict().items())
    assert recipe.evaluate(test) == before


def test_keep_compressed_leaves_the_quantized_network_in_place(
    fitted: tuple[LogisticRecipe, Table],
) -> None:
    recipe, test = fitted
    kept = copy.deepcopy(recipe)
    report = quantize_dynamic_int8(kept, test, keep_compressed=True, repeats=3)
    assert report.kept is True
    quantized = torch.ao.nn.quantized.dynamic.Linear
    kinds = {type(m) for m in kept.torch_module().modules()}
    assert quantized in kinds
    assert nn.Linear not in kinds
    assert kept.evaluate(test)["accuracy"] == report.metric_after
    # The fixture's recipe (the deepcopy's source) is untouched.
    assert nn.Linear in {type(m) for m in recipe.torch_module().modules()}


def test_a_network_without_linear_layers_cannot_be_quantized() -> None:
    with pytest.raises(DataError, match="no Linear layer"):
        quantize_dynamic_int8(EmbeddingOnly(), None)


def test_the_original_comes_back_even_when_evaluation_fails(
    fitted: tuple[LogisticRecipe, Table],
) -> None:
    recipe = copy.deepcopy(fitted[0])
    original = recipe.torch_module()

    class Broken(Exception):
        pass

    def evaluate(data: Table) -> dict[str, Any]:
        if recipe.torch_module() is not original:
            raise Broken
        return LogisticRecipe.evaluate(recipe, data)

    recipe.evaluate = evaluate  # type: ignore[method-assign]
    with pytest.raises(Broken):
        quantize_dynamic_int8(recipe, fitted[1], repeats=1)
    assert recipe.torch_module() is original


# ------------------------------------------------------------------ pruning


def test_global_pruning_reaches_the_sparsity_and_leaves_no_masks(
    fitted: tuple[LogisticRecipe, Table],
) -> None:
    recipe = copy.deepcopy(fitted[0])
    test = fitted[1]
    report = prune_magnitude(recipe, test, 0.6, keep_compressed=True, repeats=5)
    module = recipe.torch_module()
    total = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
    assert report.method == "prune-global"
    assert report.target_sparsity == 0.6
    assert report.sparsity == pytest.approx(round(0.6 * total) / total)
    assert weight_sparsity(module) == report.sparsity
    assert all(not k.endswith(("_orig", "_mask")) for k in module.state_dict())
    assert all(not m._forward_pre_hooks for m in module.modules())
    # Zeros do not shrink a dense file, but they do shrink a zipped one.
    assert report.size_bytes_after == pytest.approx(report.size_bytes_before, rel=0.01)
    assert report.zipped_bytes_after < 0.8 * report.zipped_bytes_before
    assert report.metric_after is not None
    assert report.metric_after > 0.85


def test_global_pruning_ranks_weights_across_layers() -> None:
    recipe = ConvRecipe()
    with torch.no_grad():
        first = recipe.module[0]
        assert isinstance(first, nn.Conv2d)
        first.weight.mul_(100.0)  # the first layer's weights dwarf the others
    prune_magnitude(recipe, None, 0.5, keep_compressed=True, repeats=1)
    layers = [m for m in recipe.module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    zeros = [int((m.weight == 0).sum()) for m in layers]
    sizes = [m.weight.numel() for m in layers]
    assert sum(zeros) == round(0.5 * sum(sizes))
    assert zeros[0] == 0
    # The Linear layer's default init is the narrowest (fan-in 288 vs 72): it loses
    # a larger share than the second convolution.
    assert zeros[2] / sizes[2] > zeros[1] / sizes[1]


def test_per_layer_pruning_takes_the_same_share_from_each_layer() -> None:
    recipe = ConvRecipe()
    original = recipe.torch_module()
    report = prune_magnitude(recipe, None, 0.25, scope="per-layer", repeats=3)
    assert report.method == "prune-per-layer"
    assert report.layers == 3
    assert recipe.torch_module() is original
    assert weight_sparsity(original) == 0.0
    assert report.sparsity is not None
    assert 0.24 < report.sparsity < 0.26


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_outside_zero_to_one_is_refused(sparsity: float) -> None:
    with pytest.raises(DataError, match="sparsity"):
        prune_magnitude(ConvRecipe(), None, sparsity)


# ------------------------------------------------------------------ measurements


def test_report_is_json_ready_with_derived_numbers(fitted: tuple[LogisticRecipe, Table]) -> None:
    recipe, test = fitted
    report = prune_magnitude(copy.deepcopy(recipe), test, 0.3, repeats=3)
    data = json.loads(json.dumps(report.to_dict()))
    assert report.metric_after is not None
    assert report.metric_before is not None
    assert data["metric_change"] == pytest.approx(report.metric_after - report.metric_before)
    assert data["speedup"] == pytest.approx(report.latency_ms_before / report.latency_ms_after)
    assert set(data) >= {f for f in CompressionReport.__dataclass_fields__}


def test_serialized_size_and_latency_measure_the_module() -> None:
    small, large = nn.Linear(4, 4), nn.Linear(400, 400)
    assert serialized_size(large)[0] - serialized_size(small)[0] >= 400 * 400 * 4 - 4 * 4 * 4
    x_small, x_large = torch.randn(8, 4), torch.randn(8, 400)
    assert latency_ms(small, (x_small,), repeats=5) > 0
    assert latency_ms(large, (x_large,), repeats=5) > 0
    with pytest.raises(DataError):
        latency_ms(small, (x_small,), repeats=0)


def test_weight_sparsity_counts_zeros_of_prunable_layers_only() -> None:
    net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 5, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(np.eye(5, 4), dtype=torch.float32))
        net[0].weight.zero_()
    assert weight_sparsity(net) == pytest.approx(16 / 20)


def test_torch_recipe_accepts_torch_backed_recipes_and_names_what_others_lack(
    fitted: tuple[LogisticRecipe, Table],
) -> None:
    recipe = fitted[0]
    assert torch_recipe(recipe) is recipe

    class Boosting:
        name = "gradient-boosting"

        def evaluate(self, data: Any) -> dict[str, Any]:
            return {}

    with pytest.raises(DataError, match=r"gradient-boosting has no torch network .*torch_module"):
        torch_recipe(Boosting())
