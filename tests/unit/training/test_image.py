"""The image-classifier recipe: folder and digits loading with their errors, training
(determinism, resume, transfer), evaluation, TorchBacked and export -> predictor parity."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from modelmint.serving.predictors import load_predictor
from modelmint.serving.predictors.image import CONFIG_FILE, WEIGHTS_FILE
from modelmint.serving.predictors.torch_state import quantize
from modelmint.training.catalog import recipe_class
from modelmint.training.images import ImageData, augment_batch, load_images
from modelmint.training.recipe import DataError, Splits
from modelmint.training.recipes.image import ImageClassifier

# Small enough to train in about a second: the behaviours, not the accuracy, are tested.
FAST = {"image_size": 16, "width": 16, "blocks": 1, "epochs": 10, "batch_size": 16, "lr": 1e-2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny networks on a shared 2-core machine: a second torch thread only contends.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def draw_shape(kind: str, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """A white square, circle or triangle of random size and place on black."""
    image = Image.new("L", (size, size), 0)
    side = int(rng.integers(10, 16))
    x, y = (int(v) for v in rng.integers(1, size - side - 1, size=2))
    draw = ImageDraw.Draw(image)
    if kind == "square":
        draw.rectangle((x, y, x + side, y + side), fill=255)
    elif kind == "circle":
        draw.ellipse((x, y, x + side, y + side), fill=255)
    else:
        draw.polygon([(x, y + side), (x + side, y + side), (x + side // 2, y)], fill=255)
    return image


def write_shapes(root: Path, kinds: tuple[str, ...], per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for kind in kinds:
        (root / kind).mkdir(parents=True)
        for i in range(per_class):
            draw_shape(kind, rng).save(root / kind / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes(tmp_path_factory.mktemp("shapes"), ("circle", "square"), per_class=30)


@pytest.fixture(scope="module")
def fitted(shapes: Path) -> tuple[ImageClassifier, Splits[ImageData]]:
    recipe = ImageClassifier(**FAST)
    parts = recipe.split(recipe.load_data(str(shapes)))
    return recipe.fit(parts.train, parts.val), parts


# --- loading ---------------------------------------------------------------------------


def test_folder_loads_sorted_classes_resized_to_unit_range(shapes: Path) -> None:
    data = load_images(str(shapes), image_size=12, color="auto")
    assert data.classes == ("circle", "square")
    assert data.images.shape == (60, 1, 12, 12) and data.images.dtype == np.float32
    assert data.color == "grayscale" and data.pixel_max == 255.0
    assert data.images.min() >= 0.0 and data.images.max() <= 1.0
    assert data.images.max() > 0.9  # white shapes survive the resize
    assert np.bincount(data.targets).tolist() == [30, 30]
    assert data.sources[0] == str(Path("circle") / "000.png")


def test_one_color_image_makes_the_whole_folder_rgb(tmp_path: Path) -> None:
    root = write_shapes(tmp_path, ("a", "b"), per_class=2)
    Image.new("RGB", (10, 10), (200, 30, 30)).save(root / "a" / "red.png")
    data = load_images(str(root), image_size=8, color="auto")
    assert data.color == "rgb" and data.images.shape == (5, 3, 8, 8)
    red = data.images[data.sources.index(str(Path("a") / "red.png"))]
    assert red[0].mean() > 0.7 and red[1].mean() < 0.2


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    root = write_shapes(tmp_path, ("a", "b"), per_class=1)
    Image.new("RGBA", (6, 6), (0, 0, 0, 0)).save(root / "a" / "clear.png")
    data = load_images(str(root), image_size=6, color="grayscale")
    clear = data.images[data.sources.index(str(Path("a") / "clear.png"))]
    assert np.allclose(clear, 1.0)


def test_digits_are_scaled_to_unit_range_at_native_size() -> None:
    data = ImageClassifier().load_data("sklearn:digits")
    assert data.images.shape == (1797, 1, 8, 8)
    assert data.classes == tuple(str(d) for d in range(10))
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    assert data.pixel_max == 16.0
    resized = ImageClassifier(image_size=16).load_data("sklearn:digits")
    assert resized.images.shape == (1797, 1, 16, 16)


def _corrupt(root: Path) -> str:
    write_shapes(root, ("a", "b"), per_class=2)
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return "broken.png"


def _truncated(root: Path) -> str:
    write_shapes(root, ("a", "b"), per_class=2)
    whole = (root / "a" / "000.png").read_bytes()
    (root / "a" / "cut.png").write_bytes(whole[: len(whole) // 2])
    return "cut.png"


def _single_class(root: Path) -> str:
    write_shapes(root, ("only",), per_class=3)
    return "single class (only)"


def _empty_class(root: Path) -> str:
    write_shapes(root, ("a", "b"), per_class=2)
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no images here")
    return "has no PNG or JPEG"


def _no_subfolders(root: Path) -> str:
    root.mkdir(exist_ok=True)
    draw_shape("square", np.random.default_rng(0)).save(root / "loose.png")
    return "no class subfolders"


@pytest.mark.parametrize(
    "make", [_corrupt, _truncated, _single_class, _empty_class, _no_subfolders]
)
def test_bad_folders_raise_data_error_naming_the_problem(tmp_path: Path, make: Any) -> None:
    root = tmp_path / "data"
    expected = make(root)
    with pytest.raises(DataError, match=re.escape(expected)):
        ImageClassifier().load_data(str(root))


def test_missing_folder_and_file_instead_of_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageClassifier().load_data(str(tmp_path / "nowhere"))
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file"):
        ImageClassifier().load_data(str(tmp_path / "file.png"))


def test_unknown_bundled_set_and_bad_params_are_refused() -> None:
    with pytest.raises(DataError, match="unknown bundled image set"):
        ImageClassifier().load_data("sklearn:mnist")
    with pytest.raises(DataError, match="color"):
        ImageClassifier(color="sepia").load_data("sklearn:digits")
    with pytest.raises(DataError, match="freeze_backbone needs init_from"):
        ImageClassifier(freeze_backbone=True).load_data("sklearn:digits")


def test_training_on_a_single_class_is_refused(fitted: tuple[Any, Splits[ImageData]]) -> None:
    _, parts = fitted
    only_circles = parts.train.subset(np.flatnonzero(parts.train.targets == 0))
    with pytest.raises(DataError, match="single class"):
        ImageClassifier(**FAST).fit(only_circles)


# --- augmentation ----------------------------------------------------------------------


def test_augmentation_at_zero_strength_is_the_identity() -> None:
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    same = augment_batch(images, 0.0, False, torch.Generator().manual_seed(1))
    assert torch.allclose(same, images, atol=1e-5)


def test_augmentation_moves_pixels_reproducibly_and_stays_in_range() -> None:
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    one = augment_batch(images, 1.0, True, torch.Generator().manual_seed(1))
    two = augment_batch(images, 1.0, True, torch.Generator().manual_seed(1))
    assert torch.equal(one, two)
    assert (one - images).abs().mean() > 0.05
    assert one.min() >= 0.0 and one.max() <= 1.0


# --- training --------------------------------------------------------------------------


def test_fit_learns_shapes_and_reports_every_epoch(shapes: Path) -> None:
    calls: list[tuple[str, int, int, dict[str, float]]] = []

    def record(stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        calls.append((stage, done, total, dict(metrics)))

    recipe = ImageClassifier(**FAST)
    parts = recipe.split(recipe.load_data(str(shapes)))
    assert recipe.fit(parts.train, parts.val, progress=record) is recipe
    assert [c[1] for c in calls] == list(range(1, FAST["epochs"] + 1))
    assert all(c[0] == "epoch" and c[2] == FAST["epochs"] for c in calls)
    assert all("loss" in c[3] and "accuracy" in c[3] for c in calls)
    assert calls[-1][3]["loss"] < calls[0][3]["loss"]
    assert recipe.evaluate(parts.train)["accuracy"] >= 0.9


def test_evaluate_reports_per_class_metrics_and_a_confusion_matrix(
    fitted: tuple[ImageClassifier, Splits[ImageData]],
) -> None:
    recipe, parts = fitted
    report = recipe.evaluate(parts.test)
    json.dumps(report)  # JSON-serialisable as is
    matrix = np.asarray(report["confusion_matrix"]["matrix"])
    assert report["confusion_matrix"]["labels"] == ["circle", "square"]
    assert matrix.shape == (2, 2) and matrix.sum() == len(parts.test) == report["rows"]
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert set(report["per_class"]) == {"circle", "square"}
    assert report["per_class"]["square"]["support"] == int((parts.test.targets == 1).sum())
    f1s = [report["per_class"][label]["f1"] for label in ("circle", "square")]
    assert report["f1_macro"] == pytest.approx(np.mean(f1s))


def test_same_seed_gives_the_same_report_and_another_seed_does_not(shapes: Path) -> None:
    def run(seed: int) -> dict[str, Any]:
        recipe = ImageClassifier(**FAST, seed=seed)
        parts = recipe.split(recipe.load_data(str(shapes)))
        return recipe.fit(parts.train, parts.val).evaluate(parts.test)

    first = run(0)
    assert run(0) == first
    assert run(1) != first


def test_params_round_trip_through_the_catalog() -> None:
    recipe = recipe_class("image-classifier")(**FAST, seed=3)
    assert isinstance(recipe, ImageClassifier)
    assert ImageClassifier(**recipe.get_params()).get_params() == recipe.get_params()
    assert recipe.get_params()["seed"] == 3 and recipe.get_params()["image_size"] == 16


def test_interrupted_run_resumes_at_the_next_epoch_with_the_same_result(
    shapes: Path, tmp_path: Path
) -> None:
    params = {**FAST, "epochs": 4}
    recipe = ImageClassifier(**params)
    parts = recipe.split(recipe.load_data(str(shapes)))
    reference = ImageClassifier(**params).fit(parts.train, parts.val)

    class Interrupt(Exception):
        pass

    def stop_after_two(stage: str, done: int, total: int, metrics: Mapping[str, float]) -> None:
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        ImageClassifier(**params).fit(
            parts.train, parts.val, progress=stop_after_two, checkpoint_dir=tmp_path
        )
    seen: list[int] = []
    resumed = ImageClassifier(**params).fit(
        parts.train,
        parts.val,
        progress=lambda stage, done, total, metrics: seen.append(done),
        checkpoint_dir=tmp_path,
    )
    assert seen == [3, 4]
    assert resumed.history_ == reference.history_
    assert resumed.evaluate(parts.test) == reference.evaluate(parts.test)
    for key, value in reference.torch_module().state_dict().items():
        assert torch.equal(resumed.torch_module().state_dict()[key], value), key


def test_early_stopping_keeps_the_best_validation_epoch(shapes: Path) -> None:
    recipe = ImageClassifier(**{**FAST, "epochs": 30, "patience": 2, "lr": 3e-2})
    parts = recipe.split(recipe.load_data(str(shapes)))
    recipe.fit(parts.train, parts.val)
    accuracies = [h["accuracy"] for h in recipe.history_]
    assert len(accuracies) < 30  # stopped early
    assert accuracies[recipe.best_epoch_ - 1] == max(accuracies)
    assert len(accuracies) - recipe.best_epoch_ == 2  # exactly `patience` epochs after
    best = recipe.evaluate(parts.val)["accuracy"]
    assert best == pytest.approx(max(accuracies))


# --- TorchBacked, export and serving ---------------------------------------------------


def test_torch_module_on_example_inputs_gives_the_predictions(
    fitted: tuple[ImageClassifier, Splits[ImageData]],
) -> None:
    recipe, parts = fitted
    (inputs,) = recipe.example_inputs()
    with torch.inference_mode():
        logits = recipe.torch_module()(inputs)
    first = parts.train.subset(np.arange(len(inputs), dtype=np.int64))
    assert torch.equal(inputs, torch.from_numpy(first.images))
    expected = recipe.predict_proba(first)
    assert np.allclose(torch.softmax(logits, dim=1).numpy(), expected, atol=1e-6)


def test_export_then_predictor_on_file_bytes_matches_the_recipe(
    fitted: tuple[ImageClassifier, Splits[ImageData]], shapes: Path, tmp_path: Path
) -> None:
    recipe, parts = fitted
    export = recipe.export(tmp_path)
    assert export.kind == "image-classifier" and export.task == "classification"
    assert set(export.files) == {WEIGHTS_FILE, CONFIG_FILE}
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["labels"] == ["circle", "square"] and config["image_size"] == 16
    assert len(config["normalisation"]["mean"]) == config["channels"] == 1

    predictor = load_predictor(tmp_path, threads=1)
    files = [(shapes / source).read_bytes() for source in parts.test.sources]
    results = predictor.predict([predictor.validate(data) for data in files])
    expected = recipe.predict_proba(parts.test)
    assert [r["label"] for r in results] == recipe.predict(parts.test)
    served = np.asarray([[r["scores"][label] for label in recipe.classes_] for r in results])
    assert np.abs(served - expected).max() < 1e-5


def test_quantized_module_exports_and_serves(
    fitted: tuple[ImageClassifier, Splits[ImageData]], tmp_path: Path
) -> None:
    recipe, parts = fitted
    original = recipe.torch_module()
    recipe.use_module(quantize(original))
    try:
        expected = recipe.predict_proba(parts.test)
        recipe.export(tmp_path)
    finally:
        recipe.use_module(original)
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["quantization"] == "dynamic-int8"
    predictor = load_predictor(tmp_path)
    pixels = [np.asarray(image[0] * 255.0).tolist() for image in parts.test.images]
    # Pixel lists are resized again by the predictor: same size, so unchanged.
    results = predictor.predict([predictor.validate(p) for p in pixels])
    served = np.asarray([[r["scores"][c] for c in recipe.classes_] for r in results])
    assert np.abs(served - expected).max() < 1e-4


def test_transfer_replaces_the_head_and_freezes_the_backbone(
    fitted: tuple[ImageClassifier, Splits[ImageData]], tmp_path: Path
) -> None:
    recipe, _ = fitted
    parent_dir = tmp_path / "parent"
    parent_dir.mkdir()
    recipe.export(parent_dir)
    three = write_shapes(tmp_path / "three", ("circle", "square", "triangle"), per_class=12)
    # The parent's geometry wins over the child's own image_size.
    child = ImageClassifier(
        **{**FAST, "image_size": 40, "epochs": 3},
        init_from=str(parent_dir),
        freeze_backbone=True,
    )
    parts = child.split(child.load_data(str(three)))
    assert parts.train.image_size == 16
    child.fit(parts.train, parts.val)
    assert child.classes_ == ("circle", "square", "triangle")
    parent_state = recipe.torch_module().state_dict()
    child_state = child.torch_module().state_dict()
    assert child_state["head.weight"].shape == (3, 64)
    for key, value in parent_state.items():
        if not key.startswith("head."):
            assert torch.equal(child_state[key], value), key


def test_transfer_with_the_same_classes_starts_from_the_parent(
    fitted: tuple[ImageClassifier, Splits[ImageData]], tmp_path: Path
) -> None:
    recipe, parts = fitted
    recipe.export(tmp_path)
    child = ImageClassifier(**{**FAST, "epochs": 1, "lr": 1e-6}, init_from=str(tmp_path))
    child.fit(parts.train)
    # One epoch at a negligible learning rate: the parent's accuracy is kept.
    assert child.evaluate(parts.test)["accuracy"] == pytest.approx(
        recipe.evaluate(parts.test)["accuracy"], abs=0.1
    )
    scratch = ImageClassifier(**{**FAST, "epochs": 1, "lr": 1e-6}).fit(parts.train)
    assert child.evaluate(parts.train)["accuracy"] > scratch.evaluate(parts.train)["accuracy"]


def test_init_from_a_folder_that_is_not_an_export_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an exported image-classifier"):
        ImageClassifier(init_from=str(tmp_path)).load_data("sklearn:digits")


# --- the bar -------------------------------------------------------------------


@pytest.mark.slow
def test_digits_with_default_params_reach_98_5_percent_test_accuracy() -> None:
    recipe = ImageClassifier()
    parts = recipe.split(recipe.load_data("sklearn:digits"))
    started = time.perf_counter()
    recipe.fit(parts.train, parts.val)
    seconds = time.perf_counter() - started
    report = recipe.evaluate(parts.test)
    print(f"digits: test accuracy {report['accuracy']:.4f} in {seconds:.1f} s")
    assert report["rows"] == len(parts.test) >= 350
    assert report["accuracy"] >= 0.985
