"""A worker's app takes what startup built out of the garbage collector's full passes."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from modelmint.app import create_app
from modelmint.config import Settings
from modelmint.server import app_from_env


class _IdlePlatform:
    """Stands in for the platform: the lifespan only starts and closes it."""

    async def start(self) -> None:
        self.startup_object = {"built": "at startup"}

    async def close(self) -> None:
        pass


async def _frozen_after_startup(app: Any) -> int:
    gc.unfreeze()
    try:
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count()
    finally:
        gc.unfreeze()  # give the test process its heap back


@pytest.mark.parametrize("freeze", [True, False])
async def test_the_lifespan_freezes_the_heap_only_when_asked(tmp_path: Path, freeze: bool) -> None:
    settings = Settings(home=tmp_path, load_bundled_models=False)
    app = create_app(settings, _IdlePlatform(), freeze_heap=freeze)  # type: ignore[arg-type]
    frozen = await _frozen_after_startup(app)
    assert (frozen > 1000) is freeze


def test_a_worker_process_app_is_built_to_freeze(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: dict[str, Any] = {}

    def spy(settings: Settings, platform: Any = None, *, freeze_heap: bool = False) -> str:
        asked["freeze_heap"] = freeze_heap
        return "app"

    monkeypatch.setenv("MODELMINT_HOME", str(tmp_path))
    monkeypatch.setattr("modelmint.server.create_app", spy)
    monkeypatch.setattr("modelmint.server.configure_logging", lambda *a, **k: None)
    assert app_from_env() == "app"
    assert asked == {"freeze_heap": True}
