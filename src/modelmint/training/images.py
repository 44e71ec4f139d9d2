"""Image data for training: read a folder of class subfolders or a bundled set, check it,
hold it as one float array, and augment batches of it on the fly.

A folder looks like ``root/<class name>/<image>.png|.jpg|.jpeg``; classes are the
subfolder names in sorted order. Every image goes through the same pixel pipeline as
serving (``modelmint.serving.predictors.image``), so a file classified at training
time and the same file posted to the gateway give the same scores.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image

from modelmint.serving.predictors.image import GRAYSCALE, RGB, array_pixels, image_pixels
from modelmint.training.recipe import DataError

__all__ = [
    "BUNDLED",
    "COLORS",
    "IMAGE_SUFFIXES",
    "ImageData",
    "augment_batch",
    "load_digits",
    "load_folder",
    "load_images",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
COLORS = ("auto", GRAYSCALE, RGB)
BUNDLED = ("sklearn:digits",)
# Folders of photos default to this side; bundled sets keep their native size.
DEFAULT_FOLDER_SIZE = 32
# Pillow modes whose pixels are shades of gray: a folder of only these trains a
# one-channel network under color="auto".
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
# Ranges of augment_batch's random affine transform at strength 1, scaled linearly.
_MAX_DEGREES = 12.0
_MAX_ZOOM = 0.10  # +-10% scale
_MAX_SHIFT = 0.10  # +-10% of the side (affine_grid coordinates span 2 per side)


@dataclass(frozen=True, slots=True)
class ImageData:
    """Images, their class indices and the label space they index.

    ``classes`` is the whole label space of the source, kept by every subset so a
    split that misses a class still maps indices to the same names.
    """

    images: NDArray[np.float32]  # (N, C, S, S) in [0, 1]
    targets: NDArray[np.int64]  # (N,) indices into classes
    classes: tuple[str, ...]
    color: str  # "grayscale" or "rgb"
    # The raw value of white in the source (16 for digits, 255 for image files): what
    # a client sending pixel lists must scale by.
    pixel_max: float
    sources: tuple[str, ...]  # a file name (or bundled-set row) per image, for messages

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: NDArray[np.int64]) -> ImageData:
        return ImageData(
            self.images[indices],
            self.targets[indices],
            self.classes,
            self.color,
            self.pixel_max,
            tuple(self.sources[i] for i in indices.tolist()),
        )


def load_images(source: str, *, image_size: int | None, color: str) -> ImageData:
    """``sklearn:digits`` or a folder path, checked; DataError names what is wrong."""
    if color not in COLORS:
        raise DataError(f"color must be one of {', '.join(COLORS)}; got {color!r}")
    if image_size is not None and not 4 <= image_size <= 1024:
        raise DataError(f"image_size must be from 4 to 1024 pixels; got {image_size}")
    if source.startswith("sklearn:"):
        if source != "sklearn:digits":
            raise DataError(f"unknown bundled image set {source!r}; known: {', '.join(BUNDLED)}")
        return load_digits(image_size=image_size, color=color)
    return load_folder(Path(source), image_size=image_size or DEFAULT_FOLDER_SIZE, color=color)


def load_digits(*, image_size: int | None = None, color: str = "auto") -> ImageData:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, values 0..16)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8)
    mode = RGB if color == RGB else GRAYSCALE
    size = image_size or raw.shape[-1]
    images = np.stack([array_pixels(image, mode, size, 16.0) for image in raw])
    return ImageData(
        images=images,
        targets=np.asarray(bunch.target, dtype=np.int64),
        classes=tuple(str(name) for name in bunch.target_names),
        color=mode,
        pixel_max=16.0,
        sources=tuple(f"sklearn:digits[{i}]" for i in range(len(raw))),
    )


def load_folder(root: Path, *, image_size: int, color: str = "auto") -> ImageData:
    """A folder of class subfolders of PNG/JPEG files, each decoded, converted to one
    colour mode and resized to ``image_size`` squared."""
    files = _class_files(root)
    mode = color if color != "auto" else _auto_color(files)
    classes = tuple(files)
    images: list[NDArray[np.float32]] = []
    targets: list[int] = []
    sources: list[str] = []
    for index, name in enumerate(classes):
        for path in files[name]:
            # Decoded one at a time: only the resized pixels of a folder stay in memory.
            images.append(image_pixels(_open(path, decode=True), mode, image_size))
            targets.append(index)
            sources.append(str(path.relative_to(root)))
    return ImageData(
        images=np.stack(images),
        targets=np.asarray(targets, dtype=np.int64),
        classes=classes,
        color=mode,
        pixel_max=255.0,
        sources=tuple(sources),
    )


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, both sorted; every check on the folder layout."""
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is a file; give a folder with one subfolder per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"image folder {root} has no class subfolders: put each class's images in a "
            "subfolder named after the class"
        )
    if len(folders) < 2:
        raise DataError(
            f"image folder {root} has a single class ({folders[0].name}); "
            "a classifier needs at least two"
        )
    files: dict[str, list[Path]] = {}
    for folder in folders:
        images = sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not images:
            raise DataError(f"class folder {folder} has no PNG or JPEG files")
        files[folder.name] = images
    return files


def _open(path: Path, *, decode: bool) -> Image.Image:
    """The image at ``path`` (its pixels decoded when ``decode``, else only its header
    read); DataError naming the file when it is not a readable image."""
    try:
        with warnings.catch_warnings():
            # A huge image is still an image; memory, not Pillow's bomb heuristic, decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            if decode:
                image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return image


def _auto_color(files: dict[str, list[Path]]) -> str:
    """Grayscale when every image is, else RGB: colour is kept whenever any image has it.
    Only headers are read here, so a corrupt file is named by the decoding pass."""
    for paths in files.values():
        for path in paths:
            with _open(path, decode=False) as image:
                if image.mode not in _GRAY_MODES:
                    return RGB
    return GRAYSCALE


def augment_batch(
    images: torch.Tensor, strength: float, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random shift/rotation/zoom (and optional mirror) of (N, C, H, W) pixels, one
    transform per image, resampled bilinearly with the edge pixels extended."""
    n = images.shape[0]

    def uniform() -> torch.Tensor:  # (N,) in [-1, 1)
        return torch.rand(n, generator=generator) * 2 - 1

    angle = uniform() * math.radians(_MAX_DEGREES) * strength
    zoom = 1 + uniform() * _MAX_ZOOM * strength
    shift = torch.stack([uniform(), uniform()], dim=1) * 2 * _MAX_SHIFT * strength
    mirror = torch.ones(n)
    if hflip:
        mirror = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * mirror, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * mirror, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )  # (N, 2, 3): output coordinates -> input coordinates
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
