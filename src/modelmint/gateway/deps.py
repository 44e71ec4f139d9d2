"""Who calls the API: the API key or the admin token of a request, as FastAPI dependencies.

The running platform itself comes from ``modelmint.platform.PlatformDep``.

All are ``async def``: FastAPI runs a plain ``def`` dependency on a worker thread,
a thread hop per dependency per request.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from modelmint.accounts.keys import KeyInfo
from modelmint.clock import utcnow
from modelmint.errors import AuthenticationError, ModelMintError, PaymentRequired, RateLimited
from modelmint.observability.metrics import AUTH_FAILURES
from modelmint.platform import Platform, PlatformDep

__all__ = [
    "AdminDep",
    "CurrentKey",
    "authenticate",
    "bearer_token",
    "check_credentials",
    "refuse_if_throttled",
]


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _bearer(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization"))


def refuse_if_throttled(platform: Platform, client: str | None) -> None:
    """The 429 for an address that sent too many wrong secrets lately.

    Checked before the secret is looked at: while blocked, a guesser learns nothing,
    not even from a right guess."""
    if client is None:
        return
    wait = platform.auth_throttle.retry_after(client)
    if wait is not None:
        AUTH_FAILURES.labels("throttled").inc()
        raise RateLimited(
            f"too many failed authentications from this address; retry in {max(1, round(wait))} s",
            retry_after=wait,
            code="authentication_throttled",
        )


def _failed(platform: Platform, client: str | None) -> None:
    AUTH_FAILURES.labels("rejected").inc()
    if client is not None:
        platform.auth_throttle.failed(client)


# A customer whose payment is overdue may still read its own account, to see why.
SELF_SERVICE_PATHS = frozenset({"/v1/usage", "/v1/balance"})


async def authenticate(
    platform: Platform,
    authorization: str | None,
    client: str | None = None,
    *,
    allow_blocked: bool = False,
) -> KeyInfo:
    """The API key of a request, or the 401 that says why there is none.

    ``client`` is the peer address; wrong keys from it are counted and, past the
    allowance, refused with a 429 (never a forwarded header: a client could forge it)."""
    key = await known_key(platform, authorization, client)
    refusal = refusal_of(key, allow_blocked=allow_blocked)
    if refusal is not None:
        raise refusal
    return key


async def known_key(
    platform: Platform, authorization: str | None, client: str | None = None
) -> KeyInfo:
    """The key an ``Authorization`` header names, usable or not (see ``refusal_of``);
    the 401 if there is none (or the throttle's 429)."""
    secret = bearer_token(authorization)
    if secret is None:
        raise AuthenticationError(
            "no API key given: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    refuse_if_throttled(platform, client)
    key = await platform.keys.get(secret)
    if key is None:
        _failed(platform, client)
        raise AuthenticationError("incorrect API key provided")
    return key


def refusal_of(key: KeyInfo, *, allow_blocked: bool = False) -> ModelMintError | None:
    """Why ``key`` may not be used now, or None."""
    if key.revoked:
        return AuthenticationError("this API key has been revoked", code="revoked_api_key")
    if not key.usable_at(utcnow()):
        return AuthenticationError("this API key has expired", code="expired_api_key")
    if key.payment_blocked and not allow_blocked:
        return PaymentRequired(
            "this organisation's invoice payment is overdue: pay it or update the payment "
            "method with the provider of this API (GET /v1/balance and /v1/usage still work)"
        )
    return None


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


async def _current_key(request: Request, platform: PlatformDep) -> KeyInfo:
    key = await authenticate(
        platform,
        request.headers.get("authorization"),
        _client(request),
        allow_blocked=request.url.path in SELF_SERVICE_PATHS,
    )
    request.state.organization_id = key.organization_id
    return key


CurrentKey = Annotated[KeyInfo, Depends(_current_key)]


async def _admin(request: Request, platform: PlatformDep) -> None:
    expected = platform.settings.admin_token
    given = _bearer(request)
    if expected is None:
        raise AuthenticationError("the admin API is disabled: no admin token is configured")
    client = _client(request)
    if given is not None:
        refuse_if_throttled(platform, client)
    if given is None or not secrets.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        if given is not None:
            _failed(platform, client)
        raise AuthenticationError("admin token required", code="invalid_admin_token")


AdminDep = Depends(_admin)


async def check_credentials(request: Request) -> None:
    """Authenticate a request as its route would, for errors found before the route's
    own dependencies ran: FastAPI parses and validates a JSON body first, and a caller
    without the right secret must get the 401, not a verdict on its body."""
    platform: Platform | None = getattr(request.app.state, "platform", None)
    if platform is None:  # an app without the platform (unit tests) has nobody to check
        return
    path = request.url.path
    if path.startswith("/admin"):
        await _admin(request, platform)
    elif path.startswith("/v1/"):
        await _current_key(request, platform)
