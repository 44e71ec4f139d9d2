"""The ``image-classifier`` recipe: a small ResNet trained from scratch or from an export.

    modelmint train image-classifier --data sklearn:digits
    modelmint train image-classifier --data ./photos --param image_size=64
    modelmint train image-classifier --data ./more --param init_from=var/artifacts/... \\
        --param freeze_backbone=true

Training uses AdamW with a one-cycle learning rate, label smoothing and on-the-fly
affine augmentation (small shifts, rotations and zooms; horizontal flips only on
request, since a mirrored digit is another glyph). The validation split selects
the best epoch and stops training once it stops improving. The network and the
pixel pipeline live in ``modelmint.serving.predictors.image`` so that serving
rebuilds exactly what was trained.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from modelmint.errors import ModelMintError
from modelmint.serving.predictors.image import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Architecture,
    ResNet,
    architecture_dict,
    build_network,
)
from modelmint.serving.predictors.torch_state import portable_state, quantization_of
from modelmint.training import distributed
from modelmint.training.classification_metrics import classification_report
from modelmint.training.epoch_loop import (
    EpochState,
    Trainee,
    Validation,
    fit_epochs,
    shuffled_batches,
    step_batches,
    torch_threads,
)
from modelmint.training.images import COLORS, ImageData, augment_batch, load_images
from modelmint.training.recipe import (
    DataError,
    Export,
    Progress,
    Recipe,
    SearchSpace,
    silent,
)

__all__ = ["ImageClassifier"]

_EVAL_BATCH = 512

StateDict = dict[str, torch.Tensor]


class ImageClassifier(Recipe[ImageData]):
    """Classifies images into the classes of a folder (or the digits 0-9)."""

    name: ClassVar[str] = "image-classifier"
    task: ClassVar[str] = "classification"
    primary_metric: ClassVar[str] = "accuracy"
    tuning_space: ClassVar[SearchSpace] = {
        "lr": ("log", 3e-4, 1e-2),
        "weight_decay": ("log", 1e-5, 1e-2),
        "width": ("choice", [16, 24, 32, 48]),
        "blocks": ("int", 1, 3),
        "augment": ("float", 0.0, 1.5),
        "label_smoothing": ("float", 0.0, 0.2),
    }

    def __init__(
        self,
        *,
        image_size: int | None = None,
        color: str = "auto",
        width: int = 32,
        blocks: int = 1,
        epochs: int = 30,
        batch_size: int = 64,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        augment: float = 1.0,
        hflip: bool = False,
        label_smoothing: float = 0.1,
        patience: int = 15,
        init_from: str | None = None,
        freeze_backbone: bool = False,
        threads: int = 1,
        seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
    ) -> None:
        # Square side images are resized to; None keeps a bundled set's native size
        # (8 for digits) and gives folders 32. Ignored with init_from (the parent's).
        self.image_size = image_size
        # "auto" (grayscale if every image is), "grayscale" or "rgb".
        self.color = color
        self.width = width  # channels of the first stage, doubled by each later stage
        self.blocks = blocks  # residual blocks per stage (three stages)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr  # the one-cycle schedule's peak
        self.weight_decay = weight_decay
        self.augment = augment  # 0 turns augmentation off; 1 = +-12 deg, +-10% zoom/shift
        self.hflip = hflip
        self.label_smoothing = label_smoothing
        self.patience = patience  # epochs without validation gain before stopping
        # An exported image-classifier folder to start from (transfer learning).
        self.init_from = init_from
        self.freeze_backbone = freeze_backbone  # with init_from: train the head only
        # Torch intra-op threads while this recipe computes. Small convolutions gain
        # little from more, and on a busy machine 2 threads ran an epoch 20-50x slower
        # than 1 (threads wait on each other at every op); torchrun also gives 1.
        self.threads = threads
        self.seed = seed
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction

    # --- data ------------------------------------------------------------------------

    def load_data(self, source: str) -> ImageData:
        self._check_params()
        parent = self._parent_config()
        if parent is not None:
            return load_images(source, image_size=parent["image_size"], color=parent["color"])
        return load_images(source, image_size=self.image_size, color=self.color)

    def rows(self, data: ImageData) -> int:
        return len(data)

    def subset(self, data: ImageData, indices: NDArray[np.int64]) -> ImageData:
        return data.subset(indices)

    def labels(self, data: ImageData) -> Sequence[object]:
        return [data.classes[t] for t in data.targets.tolist()]

    # --- training --------------------------------------------------------------------

    def fit(
        self,
        train: ImageData,
        val: ImageData | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        self._check_params()
        _check_train(train)
        if val is not None and len(val) == 0:
            val = None
        if val is not None:
            _check_compatible(val, train.classes, train.color, train.image_size)
        distributed.init()
        with torch_threads(self.threads):
            net, state = self._train(train, val, progress, checkpoint_dir)
        self._finish(net, train, state)
        return self

    def _train(
        self,
        train: ImageData,
        val: ImageData | None,
        progress: Progress,
        checkpoint_dir: Path | None,
    ) -> tuple[ResNet, EpochState]:
        """The epoch loop, resumed from ``checkpoint_dir`` when it holds a checkpoint."""
        torch.manual_seed(self.seed)
        net = self._network(train)
        model = distributed.wrap(net)
        optimizer = torch.optim.AdamW(
            [p for p in net.parameters() if p.requires_grad],
            lr=self.lr,
            weight_decay=self.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.lr,
            total_steps=self.epochs * self._steps_per_epoch(len(train)),
            pct_start=0.2,
        )

        def train_epoch(epoch: int) -> dict[str, float]:
            # This recipe's seeds count epochs from 0: a seed keeps giving the same model.
            metrics = self._train_epoch(net, model, optimizer, scheduler, train, epoch - 1)
            _sync_buffers(net)
            return metrics

        state = fit_epochs(
            Trainee(net, optimizer, scheduler),
            epochs=self.epochs,
            train_epoch=train_epoch,
            validate=None if val is None else functools.partial(_validate, net, val),
            patience=self.patience,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            params=self.get_params(),
        )
        return net, state

    def _steps_per_epoch(self, rows: int) -> int:
        per_rank = -(-rows // distributed.world_size())
        return max(1, -(-per_rank // self.batch_size))

    def _train_epoch(
        self,
        net: ResNet,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        train: ImageData,
        epoch: int,
    ) -> dict[str, float]:
        """One pass over this rank's shard of a freshly shuffled order. Randomness is
        derived from (seed, epoch[, rank]) so a resumed run replays it exactly."""
        rng = np.random.default_rng([self.seed, epoch])
        # BatchNorm cannot normalise a single example: a batch of one is skipped.
        batches = [b for b in shuffled_batches(rng, len(train), self.batch_size) if len(b) > 1]
        seed = np.random.SeedSequence([self.seed, epoch, distributed.rank()])
        generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        criterion = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        images, targets = torch.from_numpy(train.images), torch.from_numpy(train.targets)

        def loss_of(rows: NDArray[np.int64]) -> torch.Tensor:
            batch = torch.from_numpy(rows)
            x = images[batch]
            if self.augment > 0:
                x = augment_batch(x, self.augment, self.hflip, generator)
            loss: torch.Tensor = criterion(model(x), targets[batch])
            return loss

        model.train()
        if self.freeze_backbone:
            # Frozen means frozen: BatchNorm statistics of the backbone stay as loaded.
            net.stem.eval()
            net.body.eval()
        loss = step_batches(optimizer, batches, loss_of, after_step=scheduler.step, per_row=True)
        return {"loss": loss, "lr": float(scheduler.get_last_lr()[0])}

    def _finish(self, net: ResNet, train: ImageData, state: EpochState) -> None:
        self.module_: nn.Module = net.eval()
        self.architecture_ = net.arch
        self.classes_ = train.classes
        self.color_ = train.color
        self.image_size_ = train.image_size
        self.pixel_max_ = train.pixel_max
        self.best_epoch_ = state.best_epoch or state.epoch
        self.history_ = list(state.history)
        self.examples_ = torch.from_numpy(train.images[:8].copy())

    # --- the network -----------------------------------------------------------------

    def _network(self, train: ImageData) -> ResNet:
        """A fresh network with normalisation measured on ``train``, or the parent's
        weights (a new head when the classes differ)."""
        config = self._parent_config()
        if config is None:
            arch = Architecture.for_images(
                in_channels=train.images.shape[1],
                num_classes=len(train.classes),
                width=self.width,
                blocks=self.blocks,
                image_size=train.image_size,
            )
            net = ResNet(arch)
            mean = train.images.mean(axis=(0, 2, 3), dtype=np.float64)
            std = train.images.std(axis=(0, 2, 3), dtype=np.float64)
            net.mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            std = np.maximum(std, 1e-3)  # a constant channel must not divide by zero
            net.std.copy_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
            return net
        return self._transfer(train, config)

    def _transfer(self, train: ImageData, config: dict[str, Any]) -> ResNet:
        _check_compatible(train, None, config["color"], config["image_size"])
        parent_arch = Architecture(**config["architecture"])
        arch = Architecture(**{**architecture_dict(parent_arch), "num_classes": len(train.classes)})
        net = ResNet(arch)
        weights: StateDict = torch.load(
            Path(str(self.init_from)) / WEIGHTS_FILE, map_location="cpu", weights_only=True
        )
        if [str(c) for c in config["labels"]] != list(train.classes):
            weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        missing, unexpected = net.load_state_dict(weights, strict=False)
        if unexpected or any(not key.startswith("head.") for key in missing):
            raise DataError(f"weights in {self.init_from} do not fit their own config.json")
        if self.freeze_backbone:
            for name, parameter in net.named_parameters():
                parameter.requires_grad = name.startswith("head.")
        return net

    def _parent_config(self) -> dict[str, Any] | None:
        """The config.json of ``init_from``, checked to be a float image-classifier."""
        if self.init_from is None:
            return None
        folder = Path(str(self.init_from))
        path = folder / CONFIG_FILE
        if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise DataError(
                f"init_from {folder} is not an exported image-classifier "
                f"(expected {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        config: dict[str, Any] = json.loads(path.read_text())
        if config.get("recipe") != self.name:
            raise DataError(f"init_from {folder} was exported by {config.get('recipe')!r}")
        if config.get("quantization"):
            raise DataError(f"init_from {folder} is quantized; continue from a float export")
        return config

    # --- predictions, evaluation, export ---------------------------------------------

    def predict_proba(self, data: ImageData) -> NDArray[np.float32]:
        """Class probabilities (N, K), columns in ``classes_`` order."""
        self.check_fitted()
        _check_compatible(data, None, self.color_, self.image_size_)
        with torch_threads(self.threads):
            return _probabilities(self.module_, data.images)

    def predict(self, data: ImageData) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(data).argmax(axis=1).tolist()]

    def evaluate(self, data: ImageData) -> dict[str, Any]:
        self.check_fitted()
        if len(data) == 0:
            raise DataError("cannot evaluate on an empty set of images")
        targets = _map_targets(data, self.classes_)
        probabilities = self.predict_proba(data).astype(np.float64)
        return classification_report(targets, probabilities, self.classes_)

    def torch_module(self) -> nn.Module:
        self.check_fitted()
        return self.module_

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        self.check_fitted()
        return (self.examples_.clone(),)

    def use_module(self, module: nn.Module) -> None:
        self.check_fitted()
        self.module_ = module.eval()

    def export(self, directory: Path) -> Export:
        self.check_fitted()
        weights, quantization = portable_state(self.module_), quantization_of(self.module_)
        config: dict[str, Any] = {
            "recipe": self.name,
            "architecture": architecture_dict(self.architecture_),
            "quantization": quantization,
        }
        try:  # refuse to write an artifact the predictor could not load
            build_network(config).load_state_dict(weights)
        except RuntimeError as exc:
            raise ModelMintError(f"the module in use cannot be exported: {exc}") from exc
        config |= {
            "image_size": self.image_size_,
            "color": self.color_,
            "channels": self.architecture_.in_channels,
            "pixel_max": self.pixel_max_,
            "normalisation": {
                "mean": weights["mean"].flatten().tolist(),
                "std": weights["std"].flatten().tolist(),
            },
            "labels": list(self.classes_),
            "params": self.get_params(),
        }
        torch.save(weights, directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        export = Export(
            kind=self.name,
            task=self.task,
            format="torch",
            files=(WEIGHTS_FILE, CONFIG_FILE),
            serving={"labels": list(self.classes_), "input": "image"},
        )
        export.write_manifest(directory)
        return export

    # --- checks ----------------------------------------------------------------------

    def _check_params(self) -> None:
        problems = [
            (self.color in COLORS, f"color must be one of {', '.join(COLORS)}"),
            (self.image_size is None or 4 <= self.image_size <= 1024, "image_size: 4 to 1024"),
            (self.width >= 1 and self.blocks >= 1, "width and blocks must be >= 1"),
            (self.epochs >= 1 and self.batch_size >= 2, "epochs >= 1 and batch_size >= 2"),
            (self.lr > 0 and self.weight_decay >= 0, "lr > 0 and weight_decay >= 0"),
            (0 <= self.augment <= 3, "augment must be from 0 to 3"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.patience >= 1 and self.seed >= 0, "patience >= 1 and seed >= 0"),
            (self.threads >= 1, "threads must be >= 1"),
            (
                self.init_from is not None or not self.freeze_backbone,
                "freeze_backbone needs init_from",
            ),
        ]
        for ok, message in problems:
            if not ok:
                raise DataError(f"{self.name}: {message}")


def _probabilities(module: nn.Module, images: NDArray[np.float32]) -> NDArray[np.float32]:
    module.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(images), _EVAL_BATCH):
            batch = torch.from_numpy(images[start : start + _EVAL_BATCH])
            parts.append(torch.softmax(module(batch), dim=1).numpy())
    return np.concatenate(parts)


def _validate(net: ResNet, val: ImageData) -> Validation:
    """Accuracy and loss on validation, scored by accuracy with ties going to the lower
    loss (small validation sets saturate accuracy long before the model stops improving)."""
    probabilities = _probabilities(net, val.images)
    chosen = probabilities[np.arange(len(val)), val.targets]
    net.train()
    accuracy = float((probabilities.argmax(axis=1) == val.targets).mean())
    loss = float(-np.log(np.clip(chosen, 1e-12, 1.0)).mean())
    return Validation({"accuracy": accuracy, "val_loss": loss}, (accuracy, -loss))


def _sync_buffers(net: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics, so all ranks validate the same
    network and take the same early-stopping decision (or they would deadlock)."""
    if torch.distributed.is_initialized():
        for buffer in net.buffers():
            torch.distributed.broadcast(buffer, src=0)


def _check_train(train: ImageData) -> None:
    present = np.unique(train.targets)
    if len(present) < 2:
        only = train.classes[int(present[0])] if len(present) else "none"
        raise DataError(f"training images cover a single class ({only}); need at least two")


def _check_compatible(
    data: ImageData, classes: tuple[str, ...] | None, color: str, image_size: int
) -> None:
    if data.color != color or data.image_size != image_size:
        raise DataError(
            f"images are {data.color} {data.image_size}px but the model expects "
            f"{color} {image_size}px"
        )
    if classes is not None and data.classes != classes:
        raise DataError("validation images have different classes than training images")


def _map_targets(data: ImageData, classes: tuple[str, ...]) -> NDArray[np.int64]:
    """``data``'s targets as indices into the model's classes, matched by name."""
    if data.classes == classes:
        return data.targets
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(data.classes) - set(index))
    used = {data.classes[t] for t in data.targets.tolist()}
    if unknown and used & set(unknown):
        raise DataError(f"classes unknown to the model: {', '.join(sorted(used & set(unknown)))}")
    return np.asarray([index[data.classes[t]] for t in data.targets.tolist()], dtype=np.int64)
