"""Serve an exported ``image-classifier``: image bytes or pixel lists in, label and scores out.

This module also owns the two things training and serving must agree on to the last
bit, so the recipe imports them from here (serving never imports training):

- the pixel pipeline (``image_pixels``, ``array_pixels``): decode, colour mode,
  resize to a square of ``image_size``, scale to [0, 1];
- the network (``ResNet``), rebuilt from the ``architecture`` of ``config.json``.

An export folder holds ``model.pt`` (a torch state dict, loaded with
``weights_only``) and ``config.json`` (architecture, image size, colour mode,
normalisation, labels).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, ImageOps
from torch import nn

from modelmint.errors import InvalidRequest
from modelmint.serving.predictors.torch_state import QUANTIZED, quantize

__all__ = [
    "CONFIG_FILE",
    "MAX_SIDE",
    "WEIGHTS_FILE",
    "Architecture",
    "ImagePredictor",
    "ResNet",
    "architecture_dict",
    "array_pixels",
    "build_network",
    "image_pixels",
    "load",
]

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
# Larger inputs are refused before decoding: a 4096x4096 RGB image is already 48 MiB
# of pixels, and nothing a small classifier sees needs more.
MAX_SIDE = 4096
GRAYSCALE, RGB = "grayscale", "rgb"

Pixels = NDArray[np.float32]


# --- pixels ----------------------------------------------------------------------------


def _resize(channels_last: Pixels, size: int) -> Pixels:
    """(H, W, C) floats -> (C, size, size), each channel resized by Pillow in float mode
    (bilinear, antialiased when shrinking), so lists and files take the same path."""
    planes = []
    for c in range(channels_last.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(channels_last[:, :, c]), mode="F")
        if plane.size != (size, size):
            plane = plane.resize((size, size), Image.Resampling.BILINEAR)
        planes.append(np.asarray(plane, dtype=np.float32))
    return np.clip(np.stack(planes), 0.0, 1.0)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, as a viewer shows them, instead of whatever
    colour happens to be stored under alpha 0."""
    if "A" not in image.getbands() and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba)


def image_pixels(image: Image.Image, color: str, size: int) -> Pixels:
    """A decoded image as (C, size, size) float32 in [0, 1]; C is 1 for grayscale, 3
    for RGB. Photos are turned upright by their EXIF orientation first."""
    upright = ImageOps.exif_transpose(image) or image
    flat = _flatten_alpha(upright).convert("L" if color == GRAYSCALE else "RGB")
    array = np.asarray(flat, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    return _resize(array, size)


def array_pixels(values: NDArray[Any], color: str, size: int, pixel_max: float) -> Pixels:
    """Raw pixel values, (H, W) or (H, W, C) with C in {1, 3} on a 0..``pixel_max``
    scale, as (C, size, size) float32 in [0, 1]. RGB becomes gray with the ITU-R 601
    weights Pillow's ``convert("L")`` uses, so lists and files agree."""
    array = values.astype(np.float32) / np.float32(pixel_max)
    if array.ndim == 2:
        array = array[:, :, None]
    if color == GRAYSCALE and array.shape[2] == 3:
        weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        array = (array @ weights)[:, :, None]
    elif color == RGB and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return _resize(array, size)


# --- network ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Architecture:
    """Everything needed to rebuild the network before loading its state dict."""

    in_channels: int
    num_classes: int
    # Channels of the first stage; the second and third stages double it each time.
    width: int
    # Residual blocks per stage.
    blocks: int
    # Average-pool factor after the stem: keeps the first stage at <= 32x32 pixels
    # whatever the image size, which bounds the cost of large inputs.
    stem_pool: int

    @classmethod
    def for_images(
        cls, *, in_channels: int, num_classes: int, width: int, blocks: int, image_size: int
    ) -> Architecture:
        return cls(in_channels, num_classes, width, blocks, max(1, image_size // 32))


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers around an identity (or 1x1 projection) shortcut."""

    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: normalise, stem, three stages (stride 1, 2, 2), global average
    pooling, linear head. Takes (N, C, H, W) pixels in [0, 1], returns logits (N, K).

    Normalisation lives inside the network (as buffers) so the weights always travel
    with the statistics they were trained on, in exports and in ONNX alike.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.register_buffer("mean", torch.zeros(1, arch.in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, arch.in_channels, 1, 1))
        width = arch.width
        self.stem = nn.Sequential(
            nn.Conv2d(arch.in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AvgPool2d(arch.stem_pool) if arch.stem_pool > 1 else nn.Identity(),
        )
        stages: list[nn.Module] = []
        channels = width
        for stage in range(3):
            out = width * 2**stage
            for block in range(arch.blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(ResidualBlock(channels, out, stride))
                channels = out
        self.body = nn.Sequential(*stages)
        self.head = nn.Linear(channels, arch.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels -> (N, D) pooled features, the input of the head."""
        x = (x - self.mean) / self.std
        maps: torch.Tensor = self.body(self.stem(x))  # (N, 4 * width, H / 4, W / 4)
        return maps.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


# --- predictor -------------------------------------------------------------------------


class ImagePredictor:
    """Classifies images with one batched forward pass per ``predict`` call."""

    task = "classification"

    def __init__(self, net: nn.Module, config: dict[str, Any]) -> None:
        self.net = net.eval()
        self.labels: list[str] = [str(label) for label in config["labels"]]
        self.image_size = int(config["image_size"])
        self.color = str(config["color"])
        self.pixel_max = float(config["pixel_max"])
        self.channels = 1 if self.color == GRAYSCALE else 3

    def validate(self, item: Any) -> Pixels:
        """Image file bytes (PNG/JPEG), base64 text of them, or a nested list of pixel
        values -> (C, S, S) float32 pixels ready for the network."""
        if isinstance(item, str):
            item = _base64(item)
        if isinstance(item, bytes | bytearray | memoryview):
            return image_pixels(_decode(bytes(item)), self.color, self.image_size)
        if isinstance(item, list):
            array = self._pixel_array(item)
            return array_pixels(array, self.color, self.image_size, self.pixel_max)
        raise InvalidRequest(
            "an image must be PNG/JPEG bytes (base64 in JSON) or a nested list of pixel "
            f"values; got {type(item).__name__}"
        )

    def _pixel_array(self, item: list[Any]) -> NDArray[np.float64]:
        try:
            array = np.asarray(item, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(
                "pixel values must be a rectangular nested list of numbers"
            ) from exc
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
            raise InvalidRequest(
                "pixel values must have shape [height][width] or [height][width][channels] "
                f"with 1 or 3 channels; got shape {list(array.shape)}"
            )
        height, width = array.shape[:2]
        if min(height, width) < 1 or max(height, width) > MAX_SIDE:
            raise InvalidRequest(
                f"image is {width}x{height}; each side must be 1 to {MAX_SIDE} pixels"
            )
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > self.pixel_max:
            raise InvalidRequest(f"pixel values must be numbers from 0 to {self.pixel_max:g}")
        return array

    def predict(self, items: list[Any]) -> list[Any]:
        if not items:
            return []
        batch = torch.from_numpy(np.stack(items))
        with torch.inference_mode():
            probabilities = torch.softmax(self.net(batch), dim=1).numpy()
        return [self._result(row) for row in probabilities]

    def _result(self, row: NDArray[np.float32]) -> dict[str, Any]:
        return {
            "label": self.labels[int(row.argmax())],
            "scores": {label: float(p) for label, p in zip(self.labels, row, strict=True)},
        }

    def describe(self) -> dict[str, Any]:
        return {
            "labels": list(self.labels),
            "input": "image",
            "formats": ["png", "jpeg", "pixels"],
            "image_size": self.image_size,
            "color": self.color,
            "channels": self.channels,
            "pixel_max": self.pixel_max,
            "max_side": MAX_SIDE,
        }


def _base64(text: str) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("image text is not valid base64") from exc


def _decode(data: bytes) -> Image.Image:
    """Open and fully decode image bytes, refusing oversized images before their pixels
    are decoded (the header gives the size)."""
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest("image data could not be decoded as PNG or JPEG") from exc
    width, height = image.size
    if max(width, height) > MAX_SIDE:
        raise InvalidRequest(f"image is {width}x{height}; each side must be at most {MAX_SIDE}")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequest(f"image data is corrupt or truncated: {exc}") from exc
    return image


def build_network(config: dict[str, Any]) -> nn.Module:
    """The network described by an export's config, without weights; quantized the same
    way as at export time so the state dict fits."""
    net: nn.Module = ResNet(Architecture(**config["architecture"]))
    if config.get("quantization") == QUANTIZED:
        net = quantize(net)
    return net


def load(directory: Path, manifest: dict[str, Any], threads: int) -> ImagePredictor:
    """The manifest-driven entry point of ``modelmint.serving.predictors.load_predictor``."""
    torch.set_num_threads(max(1, threads))
    config: dict[str, Any] = json.loads((directory / CONFIG_FILE).read_text())
    net = build_network(config)
    with warnings.catch_warnings():
        # Quantized layers are stored through TypedStorage, which torch warns about.
        warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning)
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return ImagePredictor(net, config)


def architecture_dict(arch: Architecture) -> dict[str, int]:
    """The JSON form of an architecture, as stored in ``config.json``."""
    return asdict(arch)
