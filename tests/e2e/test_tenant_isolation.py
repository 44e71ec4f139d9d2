"""Organisation A's key can never read or change organisation B's data.

The whole gateway runs in-process (httpx's ASGI transport, a real SQLite database, a
real mock upstream over a socket). Customer keys only reach ``/v1``; everything that
shows or changes usage, invoices, keys, wallets or budgets sits under ``/admin`` and
needs the admin token. The admin routes are enumerated from the app's own OpenAPI
document, so a route added later is covered without editing this file.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from modelmint import accounts, registry
from modelmint.app import create_app
from modelmint.config import Settings
from modelmint.platform import Platform
from modelmint.storage import Database
from modelmint.storage.tables import ApiKey, UsageRecord
from tests.support.mock_upstream import MockUpstream

ADMIN_TOKEN = "isolation-admin-token"
MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass
class Tenants:
    app: Any
    platform: Platform
    database: Database
    keys: dict[str, str]  # organisation name -> secret
    org_ids: dict[str, str]

    def client(self, org: str | None = None, *, token: str | None = None) -> httpx.AsyncClient:
        secret = token if token is not None else (self.keys[org] if org else None)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers)


@pytest.fixture
async def tenants(sqlite_database: Database, tmp_path: Path) -> AsyncIterator[Tenants]:
    async with MockUpstream() as upstream:
        url = sqlite_database.url.render_as_string(hide_password=False)
        settings = Settings(
            home=tmp_path,
            database_url=url,
            load_bundled_models=False,
            admin_token=SecretStr(ADMIN_TOKEN),
            log_json=False,
        )
        keys: dict[str, str] = {}
        org_ids: dict[str, str] = {}
        with sqlite_database.session() as session:
            for name in ("alpha", "beta"):
                org = accounts.ensure_org(session, name)
                _, keys[name] = accounts.create_key(session, org, name=f"{name}-key")
                org_ids[name] = org.id
            registry.add_remote_model(
                session, "chat", base_url=upstream.base_url, upstream_model="mock"
            )
        platform = Platform.build(settings, Database(url))
        await platform.start()
        app = create_app(settings, platform)
        app.state.platform = platform
        try:
            yield Tenants(app, platform, sqlite_database, keys, org_ids)
        finally:
            await platform.close()


def _admin_operations(app: Any, values: dict[str, str]) -> list[tuple[str, str]]:
    """Every (method, concrete path) of the admin API, path parameters filled in."""
    operations = []
    for path, item in app.openapi()["paths"].items():
        if not path.startswith("/admin"):
            continue
        concrete = re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: values.get(m[1], "x"), path)
        operations += [(method.upper(), concrete) for method in item]
    return operations


async def test_the_admin_api_is_enumerated_from_openapi(tenants: Tenants) -> None:
    paths = {path for _, path in _admin_operations(tenants.app, {})}
    # A guard on the enumeration itself: the routes that hold other tenants' data are in it.
    assert {"/admin/usage", "/admin/keys", "/admin/billing/invoices"} <= paths
    assert len(paths) >= 25


@pytest.mark.parametrize("who", ["customer-key-of-beta", "no-credentials", "wrong-token"])
async def test_no_admin_route_answers_without_the_admin_token(tenants: Tenants, who: str) -> None:
    beta = tenants.org_ids["beta"]
    values = {"org": beta, "organization": beta, "key": "x", "code": "x", "invoice_id": "x"}
    token = {"customer-key-of-beta": tenants.keys["alpha"], "wrong-token": ADMIN_TOKEN + "x"}
    async with tenants.client(token=token.get(who)) as client:
        for method, path in _admin_operations(tenants.app, values):
            # The failed-auth throttle (tested in test_security) would answer 429 here.
            tenants.platform.auth_throttle.succeeded("127.0.0.1")
            response = await client.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.text)
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error", (method, path)
            assert response.headers["www-authenticate"] == "Bearer"


async def test_a_customer_key_changes_nothing_of_another_organisation(tenants: Tenants) -> None:
    beta = tenants.org_ids["beta"]
    async with tenants.client("alpha") as alpha:
        attempts = [
            ("POST", "/admin/keys", {"organization": beta, "name": "stolen"}),
            ("POST", f"/admin/billing/organizations/{beta}/wallet", {"currency": "USD"}),
            ("PUT", f"/admin/organizations/{beta}/limits", {"rpm": 1}),
        ]
        for method, path, body in attempts:
            assert (await alpha.request(method, path, json=body)).status_code == 401
    with tenants.database.session() as session:
        count = select(func.count()).select_from(ApiKey).where(ApiKey.organization_id == beta)
        assert session.scalar(count) == 1
    async with tenants.client(token=ADMIN_TOKEN) as admin:
        orgs = (await admin.get("/admin/organizations")).json()
        assert {o["name"]: o["rpm"] for o in orgs}["beta"] is None


async def test_usage_is_recorded_against_the_key_owner_whatever_the_request_claims(
    tenants: Tenants,
) -> None:
    beta = tenants.org_ids["beta"]
    async with tenants.client("alpha") as alpha:
        response = await alpha.post(
            "/v1/chat/completions",
            headers={"OpenAI-Organization": beta, "OpenAI-Project": beta},
            json={"model": "chat", "messages": MESSAGES, "user": beta},
        )
    assert response.status_code == 200
    with tenants.database.session() as session:
        orgs = list(session.scalars(select(UsageRecord.organization_id)))
    assert orgs == [tenants.org_ids["alpha"]]


async def test_the_admin_usage_filter_shows_one_organisation_only(tenants: Tenants) -> None:
    for org, n in (("alpha", 3), ("beta", 2)):
        async with tenants.client(org) as client:
            for _ in range(n):
                body = {"model": "chat", "messages": MESSAGES}
                assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    async with tenants.client(token=ADMIN_TOKEN) as admin:
        for org, n in (("alpha", 3), ("beta", 2)):
            rows = (await admin.get("/admin/usage", params={"organization": org})).json()
            assert len(rows) == n
            assert {r["organization_id"] for r in rows} == {tenants.org_ids[org]}
        keys = (await admin.get("/admin/keys", params={"organization": "beta"})).json()
        assert {k["organization_id"] for k in keys} == {tenants.org_ids["beta"]}
        assert all("key" not in k and "key_hash" not in k for k in keys)


async def test_one_organisations_rate_limit_does_not_throttle_another(tenants: Tenants) -> None:
    async with tenants.client(token=ADMIN_TOKEN) as admin:
        limited = await admin.put("/admin/organizations/alpha/limits", json={"rpm": 1})
        assert limited.status_code == 200
    body = {"model": "chat", "messages": MESSAGES}
    async with tenants.client("alpha") as alpha, tenants.client("beta") as beta:
        assert (await alpha.post("/v1/chat/completions", json=body)).status_code == 200
        assert (await alpha.post("/v1/chat/completions", json=body)).status_code == 429
        for _ in range(3):
            assert (await beta.post("/v1/chat/completions", json=body)).status_code == 200


def _get_paths(routes: list[Any]) -> list[str]:
    """GET paths of ``routes``, descending into included routers (FastAPI keeps them nested)."""
    found: list[str] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            found += _get_paths(list(inner.routes))
        elif "GET" in (getattr(route, "methods", None) or ()):
            found.append(route.path)
    return found


async def test_dashboard_pages_do_not_open_to_a_customer_key(tenants: Tenants) -> None:
    paths = [
        path
        for path in _get_paths(list(tenants.app.routes))
        if path.startswith("/dashboard") and "{" not in path and not path.endswith("/login")
    ]
    assert len(paths) >= 3, f"too few dashboard pages found to check: {paths}"
    async with tenants.client("alpha") as alpha:
        for path in paths:
            response = await alpha.get(path, follow_redirects=False)
            assert response.status_code in (303, 307, 401), (path, response.status_code)


async def test_feedback_on_another_organisations_request_is_refused(tenants: Tenants) -> None:
    body = {"model": "chat", "messages": MESSAGES}
    async with tenants.client("alpha") as alpha, tenants.client("beta") as beta:
        answered = await beta.post("/v1/chat/completions", json=body)
        request_id = answered.headers["x-request-id"]
        stolen = await alpha.post("/v1/feedback", json={"request_id": request_id, "score": False})
        own = await beta.post("/v1/feedback", json={"request_id": request_id, "score": True})
    assert stolen.status_code == 404, stolen.text
    assert set(stolen.json()["error"]) == {"message", "type", "param", "code"}
    assert own.status_code == 200, own.text
    assert own.json()["score"] == 1.0  # beta's own rating, untouched by alpha's attempt
