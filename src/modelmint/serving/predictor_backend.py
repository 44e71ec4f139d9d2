"""Serving a recipe's exported artifact: its predictor behind a dynamic batcher.

Inputs are validated one by one on the event loop (a bad row is the caller's 400,
never a failed batch for everyone), then concurrent requests share calls of the
predictor's ``predict``; each request is charged its share of the measured busy
time, by item.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from modelmint.serving.dynamic_batching import BatchLimits, DynamicBatcher
from modelmint.serving.predictors import Predictor, load_predictor
from modelmint.serving.types import Prediction, Usage

__all__ = ["PredictorBackend"]


class PredictorBackend:
    def __init__(
        self,
        directory: Path,
        *,
        threads: int,
        limits: BatchLimits,
        model: str = "",
        deployment: str = "",
    ) -> None:
        self._directory = directory
        self._threads = threads
        self._limits = limits
        self._labels = (model, deployment)
        self._predictor: Predictor | None = None
        self._batcher: DynamicBatcher[Any, Any] | None = None

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            raise RuntimeError("the predictor is not loaded yet")
        return self._predictor

    async def start(self) -> None:
        self._predictor = await asyncio.to_thread(
            load_predictor, self._directory, threads=self._threads
        )
        model, deployment = self._labels
        self._batcher = DynamicBatcher(
            self._predictor.predict, self._limits, model=model, deployment=deployment
        )
        self._batcher.start()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    def validate(self, item: Any) -> Any:
        return self.predictor.validate(item)

    def describe(self) -> dict[str, Any]:
        return self.predictor.describe()

    async def predict(self, items: list[Any]) -> Prediction:
        if self._batcher is None:
            raise RuntimeError("the predictor is not started")
        done = await self._batcher.submit(items)
        return Prediction(done.results, Usage(engine_ms=done.engine_ms))
