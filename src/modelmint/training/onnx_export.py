"""ONNX export of a fitted torch recipe, with a parity check against torch.

``export_onnx`` writes the recipe's network to one ``.onnx`` file with a dynamic
batch axis, loads it in onnxruntime and runs it on ``example_inputs()`` and on a
batch of another size, and states the largest absolute difference from torch's
outputs. A file that disagrees with torch beyond the tolerance is an error, not a
warning: serving it would silently change predictions.

The exporter is torch's default one (``dynamo=True``, torch.export + onnxscript);
measured here on an MLP, a CNN with BatchNorm and an embedding model with integer
inputs it matched torch to 3e-7. The legacy TorchScript exporter, deprecated in
torch 2.13, is only a fallback for networks torch.export cannot capture, and the
report says which one produced the file.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from modelmint.errors import ModelMintError
from modelmint.training.recipe import DataError, TorchBacked

__all__ = ["DEFAULT_TOLERANCE", "OnnxParityError", "OnnxReport", "export_onnx"]

# float32 networks of the recipes' size agree with onnxruntime to ~1e-6; 1e-4 leaves
# room for deeper networks' accumulated rounding while still catching a wrong graph.
DEFAULT_TOLERANCE = 1e-4
# Above this many parameter bytes the weights go to a side file: protobuf caps one
# file at 2 GiB.
_EXTERNAL_DATA_BYTES = 1 << 30

Exporter = Literal["dynamo", "torchscript"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHATTY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._export",
    "torch._dynamo",
    "torch.fx.experimental.symbolic_shapes",
)


class OnnxParityError(ModelMintError):
    """The exported graph does not compute what the torch network computes."""

    code = "onnx_parity"


@dataclass(frozen=True, slots=True)
class OnnxReport:
    path: Path
    opset: int
    exporter: Exporter
    input_names: list[str]
    output_names: list[str]
    # Largest |onnxruntime - torch| over every output and every checked batch.
    max_abs_diff: float
    tolerance: float
    batch_sizes: list[int]
    size_bytes: int
    # Caveats: why the fallback exporter was used, and the tracer's warnings.
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def export_onnx(
    recipe: TorchBacked,
    path: Path,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> OnnxReport:
    """Export ``recipe.torch_module()`` to ``path`` and check it against torch.

    With ``dynamic_batch`` the first axis of every input and output is symbolic and a
    second batch of another size is checked too; without it the file only accepts
    the example batch size.
    """
    module = recipe.torch_module().eval()
    inputs = recipe.example_inputs()
    if not inputs or any(t.dim() == 0 for t in inputs):
        raise DataError("example_inputs() must give at least one tensor with a batch axis")
    input_names = _input_names(module, len(inputs))
    with torch.inference_mode():
        expected = _flatten(module(*inputs))
    output_names = (
        ["output"] if len(expected) == 1 else [f"output_{i}" for i in range(len(expected))]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter, notes = _export(module, inputs, path, input_names, output_names, dynamic_batch, opset)
    batches = [inputs]
    if dynamic_batch:
        batches.append(_other_batch(inputs))
    diff = _parity(module, path, input_names, batches)
    report = OnnxReport(
        path=path,
        opset=_opset(path),
        exporter=exporter,
        input_names=input_names,
        output_names=output_names,
        max_abs_diff=diff,
        tolerance=tolerance,
        batch_sizes=[int(b[0].shape[0]) for b in batches],
        size_bytes=sum(p.stat().st_size for p in _files(path)),
        notes=notes,
    )
    if not diff <= tolerance:  # also catches NaN
        raise OnnxParityError(
            f"ONNX export of {type(module).__name__} differs from torch by {diff:.3g} "
            f"(tolerance {tolerance:.3g}) on batches of {report.batch_sizes}; "
            f"the file {path} should not be served"
        )
    return report


def _input_names(module: nn.Module, count: int) -> list[str]:
    """The forward's own argument names when they line up, else input_0, input_1..."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [
        p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) >= count and len(set(positional[:count])) == count:
        return positional[:count]
    return [f"input_{i}" for i in range(count)]


def _export(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
    opset: int | None,
) -> tuple[Exporter, list[str]]:
    """Write the file; which exporter did, and what a reader of the report should know."""
    # torch.export specialises a batch axis of size 1 to a constant: trace with two rows.
    traced = tuple(torch.cat([t, t]) for t in inputs) if inputs[0].shape[0] == 1 else inputs
    names = (input_names, output_names)
    try:
        _export_dynamo(module, traced, path, names, dynamic_batch, opset)
        return "dynamo", []
    except Exception as dynamo_error:  # any capture failure: try the fallback exporter
        reason = _first_line(dynamo_error)
        try:
            tracer_notes = _export_torchscript(module, traced, path, names, dynamic_batch, opset)
        except Exception as legacy_error:
            raise DataError(
                f"cannot export {type(module).__name__} to ONNX: {reason}; "
                f"the TorchScript exporter failed too: {_first_line(legacy_error)}"
            ) from legacy_error
        notes = [f"torch.export could not capture the network ({reason}); traced instead"]
        return "torchscript", notes + tracer_notes


def _export_dynamo(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[list[str], list[str]],
    dynamic_batch: bool,
    opset: int | None,
) -> None:
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    batch = torch.export.Dim("batch")
    # A failed capture prints the half-traced graph to stderr; the error says enough.
    with _quiet_exporter(), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=names[0],
            output_names=names[1],
            opset_version=opset,
            dynamo=True,
            external_data=size > _EXTERNAL_DATA_BYTES,
            dynamic_shapes=tuple({0: batch} for _ in inputs) if dynamic_batch else None,
            verbose=False,
        )


def _export_torchscript(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[list[str], list[str]],
    dynamic_batch: bool,
    opset: int | None,
) -> list[str]:
    """The legacy exporter; returns its tracer warnings, which flag Python control
    flow on tensor values: a graph that may be right only for inputs like the examples."""
    axes = {name: {0: "batch"} for name in [*names[0], *names[1]]} if dynamic_batch else None
    with _quiet_exporter(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=names[0],
            output_names=names[1],
            opset_version=opset,
            dynamo=False,
            dynamic_axes=axes,
        )
    notes = {str(w.message) for w in caught if w.category.__name__ == "TracerWarning"}
    return sorted(notes)


def _first_line(error: BaseException) -> str:
    """The root cause's first line, without terminal colours: the exporters wrap the
    real reason in several layers of generic advice."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = _ANSI.sub("", str(error)).strip().splitlines()
    line = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return line if len(line) <= 200 else line[:200] + "…"


def _other_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The example rows plus half of them again: a batch size the export never saw."""
    extra = max(1, inputs[0].shape[0] // 2)
    return tuple(torch.cat([t, t[:extra]]) for t in inputs)


def _parity(
    module: nn.Module,
    path: Path,
    input_names: list[str],
    batches: list[tuple[torch.Tensor, ...]],
) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in batches:
        with torch.inference_mode():
            expected = _flatten(module(*batch))
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(input_names, batch, strict=True)}
        actual = session.run(None, feeds)
        if len(actual) != len(expected):
            raise OnnxParityError(
                f"ONNX graph gives {len(actual)} outputs where torch gives {len(expected)}"
            )
        for got, want in zip(actual, expected, strict=True):
            reference = want.detach().cpu().numpy()
            if np.shape(got) != reference.shape:
                raise OnnxParityError(
                    f"ONNX output shape {np.shape(got)} differs from torch's {reference.shape} "
                    f"for a batch of {batch[0].shape[0]}"
                )
            if reference.size:
                delta = np.abs(np.asarray(got, dtype=np.float64) - reference.astype(np.float64))
                worst = max(worst, float(np.max(delta)))
    return worst


def _flatten(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, list | tuple):
        return [t for item in output for t in _flatten(item)]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _flatten(output[key])]
    raise DataError(f"the network returns {type(output).__name__}; ONNX export needs tensors")


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _files(path: Path) -> list[Path]:
    side = path.with_name(path.name + ".data")
    return [path, side] if side.exists() else [path]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's chatter (missing torchvision ops, graph dumps of a failed
    capture, deprecation notices of torch internals): the report says what matters."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # Inputs sharing the batch axis get one symbolic name; torch says so loudly.
            warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
