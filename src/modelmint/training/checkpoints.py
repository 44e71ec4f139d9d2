"""Per-epoch checkpoints that let an interrupted training run resume where it stopped.

A checkpoint stores the recipe's hyperparameters beside the state, and a run only
resumes from one whose hyperparameters match: resuming with different settings
would silently train a model nobody asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from modelmint.training.recipe import DataError

__all__ = ["CHECKPOINT_FILE", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(directory: Path, params: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``state`` (epoch, model/optimizer state dicts, RNG states...) atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    partial = path.with_suffix(".tmp")
    torch.save({"params": params, "state": state}, partial)
    os.replace(partial, path)  # a crash mid-write leaves the previous checkpoint intact
    return path


def load_checkpoint(directory: Path | None, params: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state to resume from, or None when there is nothing to resume."""
    if directory is None or not (directory / CHECKPOINT_FILE).exists():
        return None
    saved = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    if saved["params"] != params:
        changed = sorted(
            k for k in set(saved["params"]) | set(params) if saved["params"].get(k) != params.get(k)
        )
        raise DataError(
            f"checkpoint in {directory} was made with different parameters ({', '.join(changed)}); "
            "delete it or train with the same parameters to resume"
        )
    state: dict[str, Any] = saved["state"]
    return state
