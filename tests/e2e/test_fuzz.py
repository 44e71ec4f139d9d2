"""Schemathesis against ModelMint's own OpenAPI document: no input may cause a 5xx, and
every error leaves in the documented OpenAI shape.

Each identity is fuzzed twice. On the operations it may use (an API key on ``/v1``,
the admin token on ``/admin``, both on the public health routes) the fuzzer must get
past authentication, so the generated bodies, queries and paths reach the routes. On
the operations it may not use (and, for a wrong key, on all of them) every answer is a
401, or the 429 of the failed-authentication throttle once a client has sent too many
wrong secrets. The two halves run against separate servers: the throttle counts
failures per address, and the cross-identity requests would otherwise throttle the
deep runs into fuzzing nothing but a 429.

This module is also the schemathesis hooks module of the CLI it starts (through
``SCHEMATHESIS_HOOKS``), which is how the checks below reach the subprocess.

A bounded run here; `make fuzz` runs many more cases.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st

from tests.support.processes import MockUpstreamProcess, Server, cli, cli_json

EXAMPLES = os.environ.get("MODELMINT_FUZZ_EXAMPLES", "15")
REPO_ROOT = Path(__file__).resolve().parents[2]
# How the CLI subprocess learns whether its identity may use the operations it fuzzes.
ACCESS_ENV = "MODELMINT_FUZZ_ACCESS"
AUTH_ENV = "MODELMINT_FUZZ_AUTHORIZATION"
# The payment provider's webhook carries no bearer token: its signature authenticates it
# (tests/e2e/test_payments_e2e.py holds that a bad one is refused).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/webhooks/stripe"})
# The OpenAI error body's fields and the JSON types each may take.
ERROR_FIELDS = {
    "message": (str,),
    "type": (str,),
    "param": (str, type(None)),
    "code": (str, type(None)),
}


def error_shape_problems(body: Any) -> list[str]:
    """What keeps ``body`` from being ``{"error": {"message", "type", "param", "code"}}``."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return [f"not an object with exactly one key, 'error': {body!r:.300}"]
    error = body["error"]
    problems = []
    if set(error) != set(ERROR_FIELDS):
        problems.append(f"error keys are {sorted(error)}, expected {sorted(ERROR_FIELDS)}")
    for name, types in ERROR_FIELDS.items():
        if name in error and not isinstance(error[name], types):
            problems.append(f"error.{name} is {error[name]!r:.100}")
    return problems


@schemathesis.check
def error_in_openai_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx and 5xx is JSON in the OpenAI error shape, whatever raised it."""
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith("application/json"), (
        f"{response.status_code} error with Content-Type {content_type!r}: "
        f"{response.text_lossy()[:300]}"
    )
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{response.status_code} error body is not JSON: {response.text_lossy()[:300]}"
        ) from None
    problems = error_shape_problems(body)
    assert not problems, f"{response.status_code} error not in the OpenAI shape: {problems}"
    return None


@schemathesis.check
def authentication_as_expected(ctx: Any, response: Any, case: Any) -> bool | None:
    """The fuzzer's identity is never refused where it is allowed; a request without the
    right secret (a wrong one, or none: schemathesis also drops the header) gets a 401, or
    the throttle's 429."""
    if case.operation.path in PUBLIC_PATHS or case.method.upper() != case.operation.method.upper():
        # A probe with a method the operation does not declare (TRACE, say) is answered by
        # the router with a 405 before any route, and its authentication, is reached.
        return None
    sent_own_secret = response.request.headers.get("authorization") == os.environ[AUTH_ENV]
    throttled = response.status_code == 429 and _error_code(response) == "authentication_throttled"
    if os.environ[ACCESS_ENV] == "allowed" and sent_own_secret:
        assert response.status_code != 401, f"the fuzzer's own identity got a 401: {response.text}"
        assert not throttled, "the fuzzer's own identity was throttled: the run fuzzed nothing"
        return None
    assert response.status_code == 401 or throttled, (
        f"a request without the right secret got {response.status_code}, not 401: "
        f"{response.text_lossy()[:300]}"
    )
    if response.status_code == 401:
        assert response.headers.get("www-authenticate") == ["Bearer"], response.headers
    return None


def _error_code(response: Any) -> Any:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


# Names that exist on the servers below. Half the generated cases use them instead of
# random text, which would only ever find a 404 and never reach the route behind it.
KNOWN_PATH_VALUES = {"model": "mock", "org": "fuzz-admin", "organization": "fuzz-admin"}


@schemathesis.hook
def flatmap_body(ctx: Any, body: Any) -> st.SearchStrategy[Any]:
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return st.sampled_from([body, {**body, "model": "mock"}])
    return st.just(body)


@schemathesis.hook
def flatmap_path_parameters(ctx: Any, path_parameters: Any) -> st.SearchStrategy[Any]:
    names = set(path_parameters or {}) & set(KNOWN_PATH_VALUES)
    if not names:
        return st.just(path_parameters)
    known = {name: KNOWN_PATH_VALUES[name] for name in names}
    return st.sampled_from([path_parameters, {**path_parameters, **known}])


def start_server(home: Path, upstream: MockUpstreamProcess) -> tuple[Server, str]:
    server = Server(home=home, extra_env={"MODELMINT_LOAD_BUNDLED_MODELS": "false"})
    cli(server.env, "models", "add-remote", "mock", "--base-url", upstream.base_url)
    key = cli_json(server.env, "keys", "create", "--org", "fuzz", "--create-org")["key"]
    # The organisation the admin fuzzing may change or delete: not the one of the key.
    cli(server.env, "keys", "create", "--org", "fuzz-admin", "--create-org")
    server.start(ready_timeout=60)
    return server, key


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstreamProcess]:
    mock = MockUpstreamProcess()
    yield mock
    mock.stop()


@pytest.fixture(scope="module")
def allowed_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstreamProcess
) -> Iterator[tuple[Server, str]]:
    """Only ever sent the right secret for each operation: nothing throttles it."""
    server, key = start_server(tmp_path_factory.mktemp("fuzz-allowed"), upstream)
    yield server, key
    server.stop()


@pytest.fixture(scope="module")
def refused_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstreamProcess
) -> Iterator[tuple[Server, str]]:
    server, key = start_server(tmp_path_factory.mktemp("fuzz-refused"), upstream)
    yield server, key
    server.stop()


def operations(server: Server, path_regex: str) -> set[str]:
    """The "METHOD /path" labels of the documented operations whose path matches."""
    document = httpx.get(server.url + "/openapi.json", timeout=30).json()
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if re.search(path_regex, path)
    }


def fuzz(server: Server, token: str, path_regex: str, access: str, workdir: Path) -> set[str]:
    """Run schemathesis on the matching operations; return the labels of those it tested."""
    junit = workdir / "junit.xml"
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json",
            "--checks", "not_a_server_error,error_in_openai_shape,authentication_as_expected",
            "--include-path-regex", path_regex,
            "--max-examples", EXAMPLES, "--seed", "1", "--no-color",
            "--header", f"Authorization: Bearer {token}",
            "--report", "junit", "--report-junit-path", str(junit),
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": __name__,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
            ACCESS_ENV: access,
            AUTH_ENV: f"Bearer {token}",
        },
        capture_output=True, text=True, timeout=900, cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-2000:]
    tested = {case.attrib["name"] for case in ET.parse(junit).iter("testcase")}
    return tested - {"Stateful tests"}


def assert_no_logged_errors(server: Server, since: int) -> None:
    """No error in the server log after its first ``since`` characters (one run's part)."""
    logs = server.logs()[since:]
    assert '"level": "error"' not in logs and '"level":"error"' not in logs


# Each identity on the operations it may use; every other operation is in the next test.
# The API key goes first: the admin fuzzing may change the server's state.
ALLOWED = {
    "api-key": r"^/(v1|healthz|readyz|metrics)(/|$)",
    "admin-token": r"^/(admin|healthz|readyz|metrics)(/|$)",
}
# Each identity on the operations it may not use: none, for a wrong key.
REFUSED = {
    "api-key": r"^/admin/",
    "admin-token": r"^/v1/",
    "wrong-key": r"^/",
}


def _token(who: str, server: Server, key: str) -> str:
    return {"api-key": key, "admin-token": server.admin_token, "wrong-key": "mm-wrong"}[who]


@pytest.mark.parametrize("who", list(ALLOWED))
def test_generated_requests_from_an_allowed_identity_get_no_server_error(
    allowed_server: tuple[Server, str], who: str, tmp_path: Path
) -> None:
    server, key = allowed_server
    logged = len(server.logs())
    tested = fuzz(server, _token(who, server, key), ALLOWED[who], "allowed", tmp_path)
    assert tested == operations(server, ALLOWED[who])
    assert_no_logged_errors(server, since=logged)


@pytest.mark.parametrize("who", list(REFUSED))
def test_generated_requests_without_the_right_secret_get_a_401(
    refused_server: tuple[Server, str], who: str, tmp_path: Path
) -> None:
    server, key = refused_server
    logged = len(server.logs())
    tested = fuzz(server, _token(who, server, key), REFUSED[who], "refused", tmp_path)
    assert tested == operations(server, REFUSED[who])
    assert_no_logged_errors(server, since=logged)


def test_the_documented_error_shape_is_the_one_checked(
    allowed_server: tuple[Server, str],
) -> None:
    server, _ = allowed_server
    document = httpx.get(server.url + "/openapi.json", timeout=30).json()
    error = document["components"]["responses"]["Error"]["content"]["application/json"]["schema"]
    fields = error["properties"]["error"]
    assert set(fields["required"]) == set(fields["properties"]) == set(ERROR_FIELDS)


def test_the_shape_check_rejects_what_is_not_an_openai_error() -> None:
    good = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
    assert error_shape_problems(good) == []
    assert error_shape_problems({"detail": "Not Found"})
    assert error_shape_problems({"error": {**good["error"], "param": 3}})
    assert error_shape_problems({"error": {"message": "m", "type": "t"}})
    assert error_shape_problems({"error": "m"})
