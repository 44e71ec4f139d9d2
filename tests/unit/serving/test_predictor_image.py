"""The image predictor: decodes and checks every kind of input, answers a batch in order,
and loads float or quantized exports written in the documented format."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelmint.errors import InvalidRequest
from modelmint.serving.predictors import Predictor, load_predictor
from modelmint.serving.predictors.image import (
    CONFIG_FILE,
    MAX_SIDE,
    WEIGHTS_FILE,
    Architecture,
    ImagePredictor,
    ResNet,
    architecture_dict,
)
from modelmint.serving.predictors.torch_state import quantize

LABELS = ("cat", "dog", "fish")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_export(
    directory: Path, *, color: str = "grayscale", size: int = 8, quantized: bool = False
) -> ResNet:
    """An export folder as the recipe writes it, around a randomly initialised network
    whose normalisation buffers are not the identity."""
    channels = 1 if color == "grayscale" else 3
    torch.manual_seed(0)
    arch = Architecture.for_images(
        in_channels=channels, num_classes=len(LABELS), width=4, blocks=1, image_size=size
    )
    net = ResNet(arch).eval()
    net.mean.fill_(0.3)
    net.std.fill_(0.2)
    module = quantize(net) if quantized else net
    torch.save(module.state_dict(), directory / WEIGHTS_FILE)
    config = {
        "recipe": "image-classifier",
        "architecture": architecture_dict(arch),
        "image_size": size,
        "color": color,
        "channels": channels,
        "pixel_max": 255.0,
        "normalisation": {"mean": [0.3] * channels, "std": [0.2] * channels},
        "labels": list(LABELS),
        "quantization": "dynamic-int8" if quantized else None,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config))
    manifest = {
        "kind": "image-classifier",
        "task": "classification",
        "format": "torch",
        "files": [WEIGHTS_FILE, CONFIG_FILE],
        "serving": {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return net


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def gray_pixels(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size)).astype(np.uint8)


@pytest.fixture
def gray(tmp_path: Path) -> tuple[ImagePredictor, ResNet]:
    net = write_export(tmp_path)
    predictor = load_predictor(tmp_path, threads=1)
    assert isinstance(predictor, ImagePredictor)
    return predictor, net


def test_loads_through_the_manifest_and_describes_its_input(
    gray: tuple[ImagePredictor, ResNet],
) -> None:
    predictor, _ = gray
    assert isinstance(predictor, Predictor) and predictor.task == "classification"
    facts = predictor.describe()
    assert facts["labels"] == list(LABELS)
    assert facts["image_size"] == 8 and facts["channels"] == 1 and facts["color"] == "grayscale"
    assert facts["max_side"] == MAX_SIDE


def test_png_jpeg_base64_and_pixel_lists_decode_to_the_same_pixels(
    gray: tuple[ImagePredictor, ResNet],
) -> None:
    predictor, _ = gray
    pixels = gray_pixels(1)
    png = encode(Image.fromarray(pixels))
    from_png = predictor.validate(png)
    assert from_png.shape == (1, 8, 8) and from_png.dtype == np.float32
    assert np.allclose(from_png[0], pixels / 255.0, atol=1e-6)
    assert np.allclose(predictor.validate(pixels.tolist()), from_png, atol=1e-6)
    text = base64.b64encode(png).decode()
    assert np.array_equal(predictor.validate(text), from_png)
    assert np.array_equal(predictor.validate("data:image/png;base64," + text), from_png)
    smooth = np.full((8, 8), 128, dtype=np.uint8)  # lossless even through JPEG
    jpeg = predictor.validate(encode(Image.fromarray(smooth), "JPEG"))
    assert np.allclose(jpeg, 128 / 255.0, atol=2 / 255.0)


def test_larger_images_are_resized_and_color_is_converted_like_pillow(
    gray: tuple[ImagePredictor, ResNet],
) -> None:
    predictor, _ = gray
    rgb = np.random.default_rng(2).integers(0, 256, size=(20, 30, 3)).astype(np.uint8)
    from_png = predictor.validate(encode(Image.fromarray(rgb)))
    from_list = predictor.validate(rgb.tolist())
    assert from_png.shape == from_list.shape == (1, 8, 8)
    # Pillow rounds the gray level to an integer before resizing; lists keep floats.
    assert np.abs(from_png - from_list).max() < 1 / 255.0


def test_rgb_model_repeats_a_gray_pixel_list_over_three_channels(tmp_path: Path) -> None:
    write_export(tmp_path, color="rgb", size=6)
    predictor = load_predictor(tmp_path)
    pixels = predictor.validate(gray_pixels(3, size=6).tolist())
    assert pixels.shape == (3, 6, 6)
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[1], pixels[2])
    assert predictor.validate(encode(Image.fromarray(gray_pixels(3, size=6)))).shape == (3, 6, 6)


def test_predict_answers_a_batch_in_order_with_the_network_probabilities(
    gray: tuple[ImagePredictor, ResNet],
) -> None:
    predictor, net = gray
    items = [predictor.validate(gray_pixels(seed).tolist()) for seed in range(5)]
    results = predictor.predict(items)
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(np.stack(items))), dim=1).numpy()
    assert len(results) == 5
    for result, row in zip(results, expected, strict=True):
        assert result["label"] == LABELS[int(row.argmax())]
        assert list(result["scores"]) == list(LABELS)
        assert np.allclose([result["scores"][label] for label in LABELS], row, atol=1e-6)
        assert sum(result["scores"].values()) == pytest.approx(1.0)
    assert [predictor.predict([item])[0] for item in items] == results
    assert predictor.predict([]) == []
    json.dumps(results)


def test_quantized_export_loads_and_stays_close_to_float(tmp_path: Path) -> None:
    net = write_export(tmp_path, quantized=True)
    predictor = load_predictor(tmp_path)
    items = [predictor.validate(gray_pixels(seed).tolist()) for seed in range(4)]
    scores = np.asarray([[r["scores"][c] for c in LABELS] for r in predictor.predict(items)])
    with torch.inference_mode():
        expected = torch.softmax(net(torch.from_numpy(np.stack(items))), dim=1).numpy()
    assert np.abs(scores - expected).max() < 0.02


def _truncated_png() -> bytes:
    whole = encode(Image.fromarray(gray_pixels(0, size=64)))
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (b"definitely not an image", "could not be decoded"),
        (_truncated_png(), "corrupt or truncated"),
        (encode(Image.new("L", (MAX_SIDE + 1, 1))), f"at most {MAX_SIDE}"),
        ("not base64 !!", "not valid base64"),
        ([[1, 2], [3]], "rectangular"),
        ([[["a"]]], "rectangular"),
        ([], "shape"),
        ([[[[1]]]], "shape"),
        ([[[1, 2]]], "shape"),
        ([[0, 256]], "from 0 to 255"),
        ([[0, -1]], "from 0 to 255"),
        ([[0, float("nan")]], "from 0 to 255"),
        ([[0] * (MAX_SIDE + 1)], f"1 to {MAX_SIDE}"),
        (42, "got int"),
        ({"pixels": [[0]]}, "got dict"),
    ],
)
def test_bad_inputs_get_invalid_request_naming_the_problem(
    gray: tuple[ImagePredictor, ResNet], item: object, message: str
) -> None:
    predictor, _ = gray
    with pytest.raises(InvalidRequest, match=message):
        predictor.validate(item)


def test_loading_sets_the_requested_thread_count(tmp_path: Path) -> None:
    write_export(tmp_path)
    before = torch.get_num_threads()
    try:
        load_predictor(tmp_path, threads=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_the_predictor_module_does_not_import_training() -> None:
    code = (
        "import sys, modelmint.serving.predictors.image\n"
        "print([m for m in sys.modules if m.startswith('modelmint.training')])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
