"""SIGKILL a gateway under load: every answer a client received was metered, exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import MockUpstreamProcess, Server, cli, cli_json

CONCURRENCY = 16


@pytest.fixture
def upstream() -> Iterator[MockUpstreamProcess]:
    mock = MockUpstreamProcess()
    yield mock
    mock.stop()


async def drive(server: Server, key: str, kill_after: int) -> set[str]:
    """Send chat requests (half streamed) until ``kill_after`` answers arrived, then SIGKILL
    the server mid-load; return the request ids of the answers received in full."""
    received: set[str] = set()
    killed = asyncio.Event()
    headers = {"Authorization": f"Bearer {key}"}

    async def one(client: httpx.AsyncClient, stream: bool) -> None:
        body = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        async with client.stream(
            "POST", server.url + "/v1/chat/completions", json=body, headers=headers
        ) as response:
            payload = await response.aread()
            complete = payload.rstrip().endswith(b"[DONE]") if stream else b'"usage"' in payload
            if response.status_code == 200 and complete:
                received.add(response.headers["x-request-id"])

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not killed.is_set():
            try:
                await one(client, stream=(i + n) % 2 == 0)
            except httpx.HTTPError:
                return  # the server died under this request
            i += 1
            if len(received) >= kill_after and not killed.is_set():
                killed.set()
                server.kill()

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(*(worker(client, n) for n in range(CONCURRENCY)))
    return received


def test_sigkill_under_load_loses_and_duplicates_no_usage(
    tmp_path: Path, upstream: MockUpstreamProcess
) -> None:
    server = Server(home=tmp_path, extra_env={"MODELMINT_LOAD_BUNDLED_MODELS": "false"})
    cli(server.env, "models", "add-remote", "mock", "--base-url", upstream.base_url)
    key = cli_json(server.env, "keys", "create", "--org", "crash", "--create-org")["key"]
    server.start(ready_timeout=60)
    received = asyncio.run(drive(server, key, kill_after=300))
    # Restart on the same database: it opens cleanly after the crash and keeps serving.
    server.start(ready_timeout=60)
    with httpx.Client() as client:
        again = client.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock", "messages": [{"role": "user", "content": "after"}]},
        )
    server.stop()
    assert again.status_code == 200
    received.add(again.headers["x-request-id"])

    with sqlite3.connect(tmp_path / "modelmint.db") as db:
        rows = db.execute("SELECT id FROM usage_records WHERE status_code = 200").fetchall()
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    metered = [row[0] for row in rows]
    assert len(metered) == len(set(metered))  # no request metered twice
    assert received <= set(metered), f"lost: {sorted(received - set(metered))[:5]}"
    # Metered but never received: answers committed, then cut by the kill before they
    # reached the client. At most one per connection in flight.
    assert len(set(metered) - received) <= CONCURRENCY
    assert len(received) >= 300
