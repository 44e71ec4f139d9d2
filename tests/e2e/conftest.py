"""One real `modelmint up` server per test session, with the real bundled models."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import OpenAI
from sqlalchemy import create_engine, text

from tests.support.processes import Server, cli_json


@dataclass
class LiveServer:
    server: Server
    key: str
    key_id: str

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def new_key(self, *args: str) -> dict[str, Any]:
        return dict(cli_json(self.server.env, "keys", "create", *args))

    def usage_row_of(self, response_id: str) -> dict[str, Any] | None:
        """The usage row of the request that answered with ``response_id`` (``chatcmpl-...``
        or ``cmpl-...``: the request id with another prefix)."""
        return self.usage_row("req_" + response_id.split("-", 1)[1])

    def usage_row(self, request_id: str) -> dict[str, Any] | None:
        engine = create_engine(f"sqlite:///{self.server.home / 'modelmint.db'}")
        try:
            with engine.connect() as connection:
                row = (
                    connection.execute(
                        text("SELECT * FROM usage_records WHERE id = :id"), {"id": request_id}
                    )
                    .mappings()
                    .first()
                )
                return dict(row) if row is not None else None
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = Server(home=tmp_path_factory.mktemp("modelmint-home"))
    server.start()
    try:
        created = cli_json(
            server.env, "keys", "create", "--org", "e2e-org", "--create-org", "--name", "main"
        )
        yield LiveServer(server, created["key"], created["id"])
    finally:
        server.stop()


@pytest.fixture
def client(live: LiveServer) -> OpenAI:
    """The official SDK, on the session's server and key, never retrying."""
    return OpenAI(base_url=live.base_url, api_key=live.key, max_retries=0)
