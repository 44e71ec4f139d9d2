"""Schemathesis against ModelMint's own OpenAPI document: no input may cause a 5xx.

A bounded run here; `make fuzz` runs many more cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import MockUpstreamProcess, Server, cli, cli_json

EXAMPLES = os.environ.get("MODELMINT_FUZZ_EXAMPLES", "15")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    upstream = MockUpstreamProcess()
    server = Server(
        home=tmp_path_factory.mktemp("fuzz"),
        extra_env={"MODELMINT_LOAD_BUNDLED_MODELS": "false"},
    )
    cli(server.env, "models", "add-remote", "mock", "--base-url", upstream.base_url)
    key = cli_json(server.env, "keys", "create", "--org", "fuzz")["key"]
    server.start(ready_timeout=60)
    try:
        yield server, key
    finally:
        server.stop()
        upstream.stop()


@pytest.mark.parametrize("who", ["api-key", "admin-token", "nobody"])
def test_no_generated_request_gets_a_server_error(
    server: tuple[Server, str], who: str, tmp_path: Path
) -> None:
    live, key = server
    token = {"api-key": key, "admin-token": live.admin_token, "nobody": "mm-wrong"}[who]
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", live.url + "/openapi.json",
            "--checks", "not_a_server_error", "--max-examples", EXAMPLES,
            "--header", f"Authorization: Bearer {token}", "--no-color", "--seed", "1",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert '"level": "error"' not in live.logs() and '"level":"error"' not in live.logs()
