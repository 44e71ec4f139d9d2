"""Every error leaves the gateway in the OpenAI shape, with the right status and headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelmint.errors import (
    AuthenticationError,
    BackendError,
    Conflict,
    ContextLengthExceeded,
    InsufficientQuota,
    InvalidRequest,
    ModelMintError,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamTimeout,
)
from modelmint.inference.protocol import ChatCompletionRequest
from modelmint.web.errors import install_error_handlers

ERRORS: dict[str, ModelMintError] = {
    "invalid": InvalidRequest("bad value", param="temperature"),
    "context": ContextLengthExceeded("too long", param="messages"),
    "auth": AuthenticationError("incorrect API key provided"),
    "quota": InsufficientQuota("no credit left"),
    "permission": PermissionDenied("not for this key"),
    "not_found": NotFound("no such thing"),
    "model": ModelNotFound("no model 'x'", param="model"),
    "conflict": Conflict("taken", param="name"),
    "too_large": PayloadTooLarge("body too large"),
    "rate": RateLimited("slow down", retry_after=2.2, code="requests_per_minute_exceeded"),
    "rate_short": RateLimited("slow down", retry_after=0.01),
    "backend": BackendError("upstream said no"),
    "unavailable": ServiceUnavailable("loading", retry_after=5),
    "unavailable_plain": ServiceUnavailable("database down"),
    "timeout": UpstreamTimeout("upstream too slow"),
}

# name -> (status, type, code, param)
EXPECTED: dict[str, tuple[int, str, str | None, str | None]] = {
    "invalid": (400, "invalid_request_error", None, "temperature"),
    "context": (400, "invalid_request_error", "context_length_exceeded", "messages"),
    "auth": (401, "invalid_request_error", "invalid_api_key", None),
    "quota": (402, "insufficient_quota", "insufficient_quota", None),
    "permission": (403, "permission_error", "model_not_allowed", None),
    "not_found": (404, "invalid_request_error", "not_found", None),
    "model": (404, "invalid_request_error", "model_not_found", "model"),
    "conflict": (409, "invalid_request_error", "conflict", "name"),
    "too_large": (413, "invalid_request_error", "payload_too_large", None),
    "rate": (429, "rate_limit_error", "requests_per_minute_exceeded", None),
    "rate_short": (429, "rate_limit_error", "rate_limit_exceeded", None),
    "backend": (502, "api_error", "bad_gateway", None),
    "unavailable": (503, "api_error", "service_unavailable", None),
    "unavailable_plain": (503, "api_error", "service_unavailable", None),
    "timeout": (504, "api_error", "timeout", None),
}


def build_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise/{name}")
    async def raise_named(name: str) -> None:
        raise ERRORS[name]

    @app.post("/chat")
    async def chat(body: ChatCompletionRequest) -> dict[str, str]:
        return {"model": body.model}

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # Unexpected exceptions are re-raised by Starlette after the 500 is sent; the client
    # must return that response instead of raising it into the test.
    with TestClient(build_app(), raise_server_exceptions=False) as test_client:
        yield test_client


def test_every_expected_case_is_covered() -> None:
    assert ERRORS.keys() == EXPECTED.keys()


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_modelmint_errors_map_to_status_and_openai_body(client: TestClient, name: str) -> None:
    status, error_type, code, param = EXPECTED[name]
    response = client.get(f"/raise/{name}")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": ERRORS[name].message,
            "type": error_type,
            "param": param,
            "code": code,
        }
    }


@pytest.mark.parametrize(
    ("name", "retry_after"),
    [("rate", "3"), ("rate_short", "1"), ("unavailable", "5"), ("unavailable_plain", None)],
)
def test_retry_after_header_on_429_and_503(
    client: TestClient, name: str, retry_after: str | None
) -> None:
    response = client.get(f"/raise/{name}")
    assert response.headers.get("retry-after") == retry_after


def test_401_asks_for_a_bearer_token(client: TestClient) -> None:
    response = client.get("/raise/auth")
    assert response.headers["www-authenticate"] == "Bearer"
    assert "www-authenticate" not in client.get("/raise/permission").headers
    assert "retry-after" not in response.headers


def test_validation_error_is_400_with_the_param(client: TestClient) -> None:
    response = client.post("/chat", json={"model": "m", "messages": [], "max_tokens": 5})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert error["message"].startswith("invalid value for messages: ")


def test_nested_validation_error_names_the_nested_param(client: TestClient) -> None:
    response = client.post("/chat", json={"model": "m", "messages": [{"role": "robot"}]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages.0.role"


def test_missing_field_is_named(client: TestClient) -> None:
    response = client.post("/chat", json={"messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "missing required parameter: model",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/chat", content=b'{"model": "m",', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "the request body is not valid JSON",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


def test_a_body_that_is_not_an_object_is_400(client: TestClient) -> None:
    response = client.post("/chat", json=[1, 2])
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "the request body must be a JSON object (Content-Type: application/json)"
    )


def test_unknown_route_is_an_openai_shaped_404(client: TestClient) -> None:
    response = client.get("/v1/nowhere")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "Not Found",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }


def test_unexpected_exception_is_a_500_without_its_text(client: TestClient) -> None:
    response = client.get("/crash")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "internal error; the request id identifies it in the logs",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
