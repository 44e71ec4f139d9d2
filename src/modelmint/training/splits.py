"""Deterministic train/validation/test splits and data fingerprints shared by recipes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from modelmint.training.errors import DataError

__all__ = ["data_hash", "input_key", "source_hash", "split_indices"]

IndexArray = NDArray[np.int64]


def split_indices(
    n: int,
    *,
    seed: int,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    stratify: Sequence[object] | None = None,
) -> tuple[IndexArray, IndexArray, IndexArray]:
    """Indices of train, validation and test rows, the same for the same seed.

    With ``stratify`` (one label per row) each class keeps its share in every part,
    so a rare class is never missing from the test set by bad luck.
    """
    if not 0 < test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise DataError("test and validation fractions must be in (0, 1) and sum below 1")
    if n < 3:
        raise DataError(f"need at least 3 rows to split into train, validation and test; got {n}")
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(n)]
    else:
        if len(stratify) != n:
            raise DataError("stratify must give one label per row")
        labels = np.asarray([str(x) for x in stratify])
        groups = [np.flatnonzero(labels == value) for value in sorted(set(labels.tolist()))]
    parts: tuple[list[IndexArray], list[IndexArray], list[IndexArray]] = ([], [], [])
    for group in groups:
        shuffled = rng.permutation(group)
        n_test = max(1, round(len(shuffled) * test_fraction)) if len(shuffled) > 2 else 0
        n_val = round(len(shuffled) * val_fraction) if len(shuffled) > 2 else 0
        parts[2].append(shuffled[:n_test])
        parts[1].append(shuffled[n_test : n_test + n_val])
        parts[0].append(shuffled[n_test + n_val :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    if len(test) == 0 or len(train) == 0:
        raise DataError(f"{n} rows are too few to split into train and test")
    return train, val, test


def data_hash(sources: Iterable[Path | bytes | str]) -> str:
    """SHA-256 over the bytes of the given files (folders walked in sorted order) or
    literal chunks: the fingerprint a version records of the data it was trained on."""
    digest = hashlib.sha256()
    for source in sources:
        if isinstance(source, bytes):
            digest.update(source)
        elif isinstance(source, str):
            digest.update(source.encode())
        elif source.is_dir():
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                digest.update(str(path.relative_to(source)).encode())
                digest.update(path.read_bytes())
        else:
            digest.update(source.read_bytes())
    return "sha256:" + digest.hexdigest()


def source_hash(sources: Sequence[str]) -> str:
    """The ``data_hash`` of training sources: a file or folder by its bytes, a named
    bundled set (``sklearn:digits``) by its name."""
    return data_hash([Path(s) if Path(s).exists() else s for s in sources])


def input_key(value: Any) -> bytes:
    """One served input as canonical bytes: equal inputs match whatever their keys' order."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
