"""Predictors: load an exported training artifact and answer batches of inputs.

Every folder a recipe exports carries a ``manifest.json`` whose ``kind`` names the
module here that loads it. Predictors are synchronous and batch-first; the serving
layer groups concurrent requests into those batches (dynamic batching) and runs
them off the event loop.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from modelmint.errors import InvalidRequest

__all__ = ["KINDS", "Predictor", "load_predictor", "read_manifest"]

# manifest kind -> module in this package exposing ``load(directory, manifest, threads)``.
KINDS = {
    "tabular-classifier": "tabular",
    "image-classifier": "image",
    "text-classifier": "text",
    "recommender": "recommender",
}


@runtime_checkable
class Predictor(Protocol):
    """Answers a batch of already-validated inputs, one result per input, in order."""

    task: str

    def validate(self, item: Any) -> Any:
        """Check and normalise one request input; raise InvalidRequest naming the
        problem. Runs before batching, so one bad input never fails a whole batch."""

    def predict(self, items: list[Any]) -> list[Any]: ...

    def describe(self) -> dict[str, Any]:
        """Facts a client may need: labels, expected features, item count..."""


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.exists():
        raise InvalidRequest(f"{directory} has no manifest.json: not an exported model")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def load_predictor(directory: Path, *, threads: int = 1) -> Predictor:
    manifest = read_manifest(directory)
    module_name = KINDS.get(str(manifest.get("kind")))
    if module_name is None:
        raise InvalidRequest(
            f"unknown model kind {manifest.get('kind')!r}; known: {', '.join(sorted(KINDS))}"
        )
    module = importlib.import_module(f"{__name__}.{module_name}")
    predictor: Predictor = module.load(directory, manifest, threads)
    return predictor
