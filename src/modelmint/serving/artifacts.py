"""Resolve a model version's artifact URI to a local path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from modelmint.errors import NotFound

__all__ = ["resolve_artifact"]


def resolve_artifact(uri: str) -> Path:
    """``package:<module>/<path>`` (a file shipped inside an installed wheel) or a file path.

    The package is located without importing it: the wheels that carry models may
    import tools we do not install.
    """
    if uri.startswith("package:"):
        package, _, inner = uri.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise NotFound(f"model package {package!r} is not installed (pip install it)")
        path = Path(next(iter(spec.submodule_search_locations))) / inner
    else:
        path = Path(uri.removeprefix("file://")).expanduser()
    if not path.exists():
        raise NotFound(f"model artifact {uri!r} not found at {path}")
    return path
