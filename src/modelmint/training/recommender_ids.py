"""User and item ids as the ``recommender`` recipe reads them: the strings training read
from the file (a number is the id it spells), and their index in a sorted vocabulary.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

__all__ = ["as_ids", "lookup"]


def as_ids(values: object, vocabulary: NDArray[np.str_], what: str) -> NDArray[np.str_]:
    """``values`` as the string ids training read from the file.

    A number is the id it spells: ``196`` and ``196.0`` (a column of ids read as
    floats, as pandas does when one is missing) are "196", or "196.0" if that is
    the id training saw. Text is taken as it is: "007" and "7" are two ids."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            shape = values.shape
            raise ValueError(f"{what} must be a sequence of ids, not an array of shape {shape}")
        if values.dtype.kind == "U":
            return values
        if values.dtype.kind in "iu":
            return values.astype(np.str_)
        listed: list[object] = values.tolist()
    elif isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ValueError(f"{what} must be a sequence of ids, not {values!r}")
    else:
        # Not through np.asarray, which would spell a float among strings "196.0".
        listed = list(values)
    return np.array([_id(value, vocabulary, what) for value in listed], dtype=np.str_)


def _id(value: object, vocabulary: NDArray[np.str_], what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what}: an id is a string or a number, not {value!r}")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what}: {number} is not an id (a missing value?)")
    if not number.is_integer():
        return repr(number)
    whole, written = str(int(number)), repr(number)
    known = lookup(vocabulary, np.array([whole, written], dtype=np.str_)) >= 0
    return written if known[1] and not known[0] else whole


def lookup(vocabulary: NDArray[np.str_], ids: NDArray[np.str_]) -> NDArray[np.int64]:
    """Index of each id in the sorted ``vocabulary``, -1 for ids not in it."""
    if len(vocabulary) == 0 or len(ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    at = np.searchsorted(vocabulary, ids).clip(max=len(vocabulary) - 1)
    return np.where(vocabulary[at] == ids, at, -1).astype(np.int64)
