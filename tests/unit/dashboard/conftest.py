"""A dashboard app on a real, migrated SQLite database, driven with FastAPI's TestClient.

The platform is built but not started: pages only run database work, no models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelmint.config import Settings
from modelmint.dashboard import mount_dashboard
from modelmint.platform import Platform
from modelmint.storage import Database, migrate
from modelmint.web.errors import install_error_handlers

ADMIN_TOKEN = "dashboard-unit-admin-token"
_HIDDEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def build_app(database: Database, admin_token: str | None = ADMIN_TOKEN) -> FastAPI:
    settings = Settings(admin_token=admin_token, load_bundled_models=False)
    app = FastAPI()
    install_error_handlers(app)
    mount_dashboard(app)
    app.state.platform = Platform.build(settings, database)
    return app


def form_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _HIDDEN.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


@dataclass
class Dashboard:
    app: FastAPI
    client: TestClient

    def client_from(self, address: str) -> TestClient:
        return TestClient(self.app, client=(address, 40000))

    def login(self, client: TestClient | None = None, token: str = ADMIN_TOKEN) -> str:
        """Log in; returns the CSRF token of the logged-in session."""
        client = client or self.client
        page = client.get("/dashboard/login")
        response = client.post(
            "/dashboard/login",
            data={"csrf_token": form_token(page.text), "token": token, "next": "/dashboard/keys"},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        return form_token(client.get("/dashboard/keys").text)


@pytest.fixture(scope="module")
def shared_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """One migrated database per test module (migrating takes about half a second);
    each test gets a fresh app, so sessions and throttles never leak between tests."""
    database = Database(f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'modelmint.db'}")
    migrate(database)
    yield database
    database.dispose()


@pytest.fixture
def dashboard(shared_database: Database) -> Iterator[Dashboard]:
    app = build_app(shared_database)
    with TestClient(app) as client:
        yield Dashboard(app, client)
