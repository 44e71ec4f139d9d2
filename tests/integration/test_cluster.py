"""Several real gateway processes sharing PostgreSQL and Redis, in front of a mock upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import MockUpstreamProcess, Server, cli, cli_json

ADMIN = "cluster-admin"


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstreamProcess]:
    mock = MockUpstreamProcess()
    yield mock
    mock.stop()


@pytest.fixture
def cluster(
    tmp_path: Path, fresh_postgres_url: str, redis_url: str, upstream: MockUpstreamProcess
) -> Iterator[list[Server]]:
    """Two gateway processes on one PostgreSQL database and one Redis."""
    env = {
        "MODELMINT_DATABASE_URL": fresh_postgres_url,
        "MODELMINT_REDIS_URL": redis_url,
        "MODELMINT_LOAD_BUNDLED_MODELS": "false",
        "MODELMINT_ADMIN_TOKEN": ADMIN,
    }
    servers = [Server(home=tmp_path / f"gw{i}", admin_token=ADMIN, extra_env=env) for i in range(2)]
    cli(servers[0].env, "models", "add-remote", "mock", "--base-url", upstream.base_url)
    try:
        for server in servers:
            server.start(ready_timeout=60)
        yield servers
    finally:  # also when the second fails to start: the first must not outlive the test
        for server in servers:
            server.stop()


def chat(client: httpx.Client | httpx.AsyncClient, server: Server, key: str) -> object:
    return client.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "mock", "messages": [{"role": "user", "content": "hi"}]},
    )


def test_two_processes_enforce_one_requests_per_minute_limit(cluster: list[Server]) -> None:
    key = cli_json(
        cluster[0].env, "keys", "create", "--org", "acme", "--create-org", "--rpm", "30"
    )["key"]

    async def fire() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            responses = await asyncio.gather(
                *(chat(client, cluster[i % 2], key) for i in range(120))  # type: ignore[misc]
            )
        return [r.status_code for r in responses]

    started = time.monotonic()
    statuses = asyncio.run(fire())
    elapsed = time.monotonic() - started
    admitted = statuses.count(200)
    # The bucket refills at 30/min = 0.5/s while the burst runs.
    assert 30 <= admitted <= 30 + int(elapsed * 0.5) + 1, (admitted, elapsed)
    assert statuses.count(429) == len(statuses) - admitted
    with httpx.Client() as client:
        refused = chat(client, cluster[1], key)
        assert refused.status_code == 429  # type: ignore[attr-defined]
        assert refused.json()["error"]["code"] == "requests_per_minute_exceeded"  # type: ignore[attr-defined]


def test_a_key_revoked_through_one_process_is_refused_by_the_other_within_a_second(
    cluster: list[Server],
) -> None:
    created = cli_json(cluster[0].env, "keys", "create", "--org", "acme", "--create-org")
    with httpx.Client() as client:
        assert chat(client, cluster[1], created["key"]).status_code == 200  # type: ignore[attr-defined]
        revoked = client.post(
            f"{cluster[0].url}/admin/keys/{created['id']}/revoke",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert revoked.status_code == 200
        at = time.monotonic()
        while chat(client, cluster[1], created["key"]).status_code != 401:  # type: ignore[attr-defined]
            assert time.monotonic() - at < 1.2, "revocation not honoured by the other process"
            time.sleep(0.02)


def test_a_model_added_from_the_cli_is_served_by_running_gateways_within_seconds(
    cluster: list[Server], upstream: MockUpstreamProcess
) -> None:
    key = cli_json(cluster[0].env, "keys", "create", "--org", "acme", "--create-org")["key"]
    cli(cluster[0].env, "models", "add-remote", "late", "--base-url", upstream.base_url)
    added = time.monotonic()
    with httpx.Client() as client:
        for server in cluster:
            while True:
                names = client.get(
                    server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
                ).json()["data"]
                if "late" in {m["id"] for m in names}:
                    break
                assert time.monotonic() - added < 3, "the new model never showed up"
                time.sleep(0.05)
        answer = client.post(
            cluster[1].url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "late", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert answer.status_code == 200 and answer.json()["model"] == "late"
