"""The interactive API docs (/docs, /redoc) work offline: every asset comes from the gateway."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from modelmint.app import create_app
from modelmint.config import Settings

# Where a page loads something from: an attribute, or the ``url:`` Swagger UI fetches.
_REFERENCES = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl:\s*)["']([^"']+)["']""")
_CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    # No lifespan: the docs pages and their assets need no platform.
    app = create_app(Settings(home=tmp_path, load_bundled_models=False))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_a_docs_page_loads_only_assets_the_gateway_serves(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    html = response.text
    assert "https:" not in html and "http:" not in html  # no CDN, no web font

    references = _REFERENCES.findall(html)

    assets = [url for url in references if url != "/openapi.json"]
    assert assets, "the page references no script or style"
    assert "/openapi.json" in references
    for url in references:
        assert url.startswith("/") and not url.startswith("//"), url
    for url in assets:
        served = await client.get(url)
        assert served.status_code == 200, url
        wanted = _CONTENT_TYPES[Path(url).suffix]
        assert wanted in served.headers["content-type"], (url, served.headers["content-type"])
        assert len(served.content) > 1000, url


async def test_the_swagger_ui_assets_are_the_bundle_and_its_stylesheet(
    client: httpx.AsyncClient,
) -> None:
    html = (await client.get("/docs")).text
    [script] = [u for u in _REFERENCES.findall(html) if u.endswith(".js")]
    body = (await client.get(script)).text
    assert "SwaggerUIBundle" in body
