"""Static files of the dashboard: its CSS and JS, and plotly.js from the installed package.

plotly.js is the ``plotly.min.js`` bundled inside the ``plotly`` Python package, served
from where pip put it, so the dashboard works offline and never loads a CDN. Only that
one file of the plotly package is reachable, under ``/dashboard/static/vendor/``.
"""

from __future__ import annotations

import os
from functools import cache
from importlib.resources import files
from pathlib import Path

from starlette.staticfiles import StaticFiles

__all__ = ["PLOTLY_ASSET", "DashboardStatic", "plotly_js_path", "static_files"]

PLOTLY_ASSET = "vendor/plotly.min.js"


@cache
def plotly_js_path() -> Path:
    """The plotly.min.js shipped in the installed ``plotly`` package."""
    path = Path(str(files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js is missing from the plotly package ({path})")
    return path


class DashboardStatic(StaticFiles):
    """The package's ``static`` folder, plus plotly.js under ``vendor/``."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if path == os.path.normpath(PLOTLY_ASSET):
            plotly = plotly_js_path()
            return str(plotly), os.stat(plotly)
        return super().lookup_path(path)


def static_files() -> DashboardStatic:
    """The ASGI app the gateway mounts at ``/dashboard/static``."""
    return DashboardStatic(packages=[("modelmint.dashboard", "static")])
