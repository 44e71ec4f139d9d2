"""Credentials: keys stored hashed and compared in constant time; wrong secrets throttled.

In-process gateway (the ``tenants`` fixture of test_tenant_isolation: two organisations,
a real SQLite database, a mock upstream over a socket). Each test speaks from its own
client address, as httpx's ASGI transport lets it say.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from modelmint.accounts import keys as key_module
from modelmint.gateway import deps
from modelmint.observability.metrics import AUTH_FAILURES
from modelmint.storage.tables import ApiKey
from tests.e2e.test_tenant_isolation import ADMIN_TOKEN, MESSAGES, Tenants, tenants

__all__ = ["tenants"]  # the fixture, re-exported so that pytest finds it here

CHAT = {"model": "chat", "messages": MESSAGES}
ALLOWANCE = 20  # failures per address per minute, as the Platform sets it


def _from(tenants: Tenants, address: str, secret: str | None) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=tenants.app, client=(address, 40000))
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers)


def _count(outcome: str) -> float:
    return float(AUTH_FAILURES.labels(outcome)._value.get())


async def test_a_key_is_stored_only_as_its_sha256_hash(tenants: Tenants) -> None:
    async with _from(tenants, "198.51.100.1", ADMIN_TOKEN) as admin:
        created = (await admin.post("/admin/keys", json={"organization": "alpha"})).json()
        listed = (await admin.get("/admin/keys")).json()
    secret = created["key"]
    assert secret.startswith("mm-") and len(secret) > 40
    assert all(secret not in str(row) for row in listed)
    with tenants.database.session() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.id == created["id"])).one()
        assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
        assert row.prefix == secret[:11]
    # Nowhere in the database file (or its write-ahead log) is the secret in clear.
    database_path = Path(str(tenants.database.url.database))
    for path in database_path.parent.glob(database_path.name + "*"):
        assert secret.encode() not in path.read_bytes(), path


def _recording(calls: list[tuple[object, object]]) -> Callable[[object, object], bool]:
    real = secrets.compare_digest

    def compare(a: object, b: object) -> bool:
        calls.append((a, b))
        return real(a, b)  # type: ignore[arg-type]

    return compare


async def test_keys_and_the_admin_token_are_compared_in_constant_time(
    tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_calls: list[tuple[object, object]] = []
    admin_calls: list[tuple[object, object]] = []
    monkeypatch.setattr(key_module.secrets, "compare_digest", _recording(key_calls))
    async with _from(tenants, "198.51.100.2", tenants.keys["beta"]) as beta:
        assert (await beta.post("/v1/chat/completions", json=CHAT)).status_code == 200
    digest = hashlib.sha256(tenants.keys["beta"].encode()).hexdigest()
    assert (digest, digest) in key_calls  # the stored hash against the presented one

    monkeypatch.setattr(key_module.secrets, "compare_digest", secrets.compare_digest)
    monkeypatch.setattr(deps.secrets, "compare_digest", _recording(admin_calls))
    async with _from(tenants, "198.51.100.2", "not-the-token") as wrong:
        assert (await wrong.get("/admin/organizations")).status_code == 401
    assert admin_calls == [(b"not-the-token", ADMIN_TOKEN.encode())]


async def test_wrong_keys_from_one_address_are_throttled_and_others_are_not(
    tenants: Tenants,
) -> None:
    rejected, throttled = _count("rejected"), _count("throttled")
    async with _from(tenants, "203.0.113.7", "mm-guess") as guesser:
        for n in range(ALLOWANCE):
            response = await guesser.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 401, n
        blocked = await guesser.post("/v1/chat/completions", json=CHAT)
        assert blocked.status_code == 429
        assert blocked.json()["error"]["code"] == "authentication_throttled"
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        # While blocked, even a right key from that address learns nothing.
        right = await guesser.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {tenants.keys['alpha']}"},
        )
        assert right.status_code == 429
    assert _count("rejected") == rejected + ALLOWANCE
    assert _count("throttled") == throttled + 2
    async with _from(tenants, "203.0.113.8", tenants.keys["alpha"]) as neighbour:
        assert (await neighbour.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await neighbour.get("/v1/models")).status_code == 200


async def test_a_missing_key_is_not_counted_as_a_guess(tenants: Tenants) -> None:
    async with _from(tenants, "203.0.113.9", None) as anonymous:
        for _ in range(ALLOWANCE + 5):
            response = await anonymous.post("/v1/chat/completions", json=CHAT)
            assert response.json()["error"]["code"] == "missing_api_key"


async def test_wrong_admin_tokens_are_throttled_too(tenants: Tenants) -> None:
    async with _from(tenants, "203.0.113.10", "admin-guess") as guesser:
        codes = [(await guesser.get("/admin/usage")).status_code for _ in range(ALLOWANCE + 1)]
    assert codes == [401] * ALLOWANCE + [429]
    async with _from(tenants, "203.0.113.11", ADMIN_TOKEN) as admin:
        assert (await admin.get("/admin/usage")).status_code == 200
