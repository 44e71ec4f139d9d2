"""A real `modelmint up` process: secrets and prompts never reach its log; size limits hold.

One server serves the whole module: a "full run" of every kind of request (answers,
streams, upstream failures, wrong keys, admin calls that create keys) and then the log
file is searched for every secret and every prompt the run used.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import MockUpstreamProcess, Server, cli, cli_json, free_port

UPSTREAM_SECRET = "sk-upstream-secret-0b4f1c"
PROMPT = "confidential-prompt-7d1e: my card is 4111 1111 1111 1111"
STREAM_PROMPT = "confidential-stream-prompt-92aa"
REPLY = "The quick brown fox"  # the mock upstream's answer, also customer data


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    upstream = MockUpstreamProcess()
    home = tmp_path_factory.mktemp("security-logs")
    live = Server(
        home=home,
        extra_env={
            "MODELMINT_LOAD_BUNDLED_MODELS": "false",
            "MODELMINT_LOG_LEVEL": "DEBUG",  # the most the log can ever say
            "MOCK_UPSTREAM_KEY": UPSTREAM_SECRET,
        },
    )
    env = live.env
    cli(env, "models", "add-remote", "mock", "--base-url", upstream.base_url,
        "--api-key-env", "MOCK_UPSTREAM_KEY")  # fmt: skip
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused
    cli(env, "models", "add-remote", "dead", "--base-url", dead, "--max-retries", "1")
    key = cli_json(env, "keys", "create", "--org", "logs", "--create-org")["key"]
    live.start(ready_timeout=60)
    try:
        yield live, key
    finally:
        live.stop()
        upstream.stop()


def _full_run(live: Server, key: str) -> list[str]:
    """Every kind of request; returns the secrets it used besides the fixed ones."""
    customer = {"Authorization": f"Bearer {key}"}
    admin = {"Authorization": f"Bearer {live.admin_token}"}
    wrong_key = "mm-wrong-but-plausible-secret-5c1d9e"
    with httpx.Client(base_url=live.url, timeout=30) as client:
        chat = {"model": "mock", "messages": [{"role": "user", "content": PROMPT}]}
        assert client.post("/v1/chat/completions", json=chat, headers=customer).status_code == 200
        stream = {
            "model": "mock",
            "messages": [{"role": "user", "content": STREAM_PROMPT}],
            "stream": True,
        }
        streamed = client.post("/v1/chat/completions", json=stream, headers=customer)
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        failed = client.post(
            "/v1/chat/completions", json={**chat, "model": "dead"}, headers=customer
        )
        assert failed.status_code == 502
        bad_json = client.post("/v1/chat/completions", content=PROMPT.encode(), headers=customer)
        assert bad_json.status_code == 400
        refused = client.post(
            "/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {wrong_key}"}
        )
        assert refused.status_code == 401
        created = client.post("/admin/keys", json={"organization": "logs"}, headers=admin)
        assert created.status_code == 201
        assert client.get("/admin/usage", headers=admin).status_code == 200
        assert client.get("/admin/usage", headers=customer).status_code == 401
    return [wrong_key, created.json()["key"]]


def test_a_full_run_logs_no_secret_and_no_prompt(server: tuple[Server, str]) -> None:
    live, key = server
    extra_secrets = _full_run(live, key)
    logs = live.logs()
    # The log is not empty: each request left a line (so the search below means something).
    assert logs.count("/v1/chat/completions") >= 5
    for secret in [key, live.admin_token, UPSTREAM_SECRET, *extra_secrets]:
        assert secret not in logs, "a secret reached the log"
    for text in (PROMPT, STREAM_PROMPT, "4111 1111", REPLY):
        assert text not in logs, f"customer data reached the log: {text!r}"


def test_a_body_without_content_length_is_cut_at_the_limit(server: tuple[Server, str]) -> None:
    live, key = server

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "mock", "messages": [{"role": "user", "content": "'
        for _ in range(6):
            yield b"a" * (1024 * 1024)  # 6 MiB against the 4 MiB default limit
        yield b'"}]}'

    with httpx.Client(timeout=30) as client:
        response = client.post(
            live.url + "/v1/chat/completions",
            content=chunks(),  # sent chunked: the size is only known by counting
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def _raw_request(port: int, head: bytes) -> bytes:
    """Send a raw HTTP/1.1 request head; the status line of the answer (or b'' if cut)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head)
            return sock.recv(4096).split(b"\r\n", 1)[0]
        except (ConnectionResetError, BrokenPipeError):
            return b""


@pytest.mark.parametrize(
    "head",
    [
        b"X-Big: " + b"a" * (256 * 1024) + b"\r\n",
        b"".join(b"X-H%d: v\r\n" % i for i in range(5000)),
    ],
    ids=["one-256KiB-header", "5000-headers"],
)
def test_oversized_headers_are_refused_and_the_server_keeps_serving(
    server: tuple[Server, str], head: bytes
) -> None:
    live, key = server
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
    status = _raw_request(live.port, request + b"\r\n" + head + b"\r\n")
    # Refused with a 4xx, or the connection dropped: never served.
    assert status == b"" or status.split(b" ")[1].startswith(b"4"), status
    with httpx.Client(timeout=10) as client:
        ok = client.get(live.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 200


def test_the_log_file_is_where_the_server_writes(server: tuple[Server, str]) -> None:
    live, _ = server
    assert Path(live.log_path).stat().st_size > 0
