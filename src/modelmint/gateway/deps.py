"""FastAPI dependencies shared by the routes.

All are ``async def``: FastAPI runs a plain ``def`` dependency on a worker thread,
a thread hop per dependency per request.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from modelmint.accounts.keys import KeyInfo
from modelmint.errors import AuthenticationError
from modelmint.gateway.platform import Platform
from modelmint.storage.db import utcnow

__all__ = ["AdminDep", "Caller", "CallerDep", "CurrentKey", "PlatformDep"]


async def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(_platform)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def _current_key(request: Request, platform: PlatformDep) -> KeyInfo:
    secret = _bearer(request)
    if secret is None:
        raise AuthenticationError(
            "no API key given: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
        )
    key = await platform.keys.get(secret)
    if key is None:
        raise AuthenticationError("incorrect API key provided")
    if key.revoked:
        raise AuthenticationError("this API key has been revoked", code="revoked_api_key")
    if not key.usable_at(utcnow()):
        raise AuthenticationError("this API key has expired", code="expired_api_key")
    request.state.organization_id = key.organization_id
    return key


CurrentKey = Annotated[KeyInfo, Depends(_current_key)]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling a model route: everything the route needs, resolved in one step."""

    platform: Platform
    key: KeyInfo
    request_id: str


async def _caller(request: Request) -> Caller:
    # One dependency with no sub-dependencies: FastAPI's dependency solving costs
    # tens of microseconds per node on every request of the hot path.
    platform: Platform = request.app.state.platform
    key = await _current_key(request, platform)
    return Caller(platform, key, str(request.scope["state"]["request_id"]))


CallerDep = Annotated[Caller, Depends(_caller)]


async def _admin(request: Request, platform: PlatformDep) -> None:
    expected = platform.settings.admin_token
    given = _bearer(request)
    if expected is None:
        raise AuthenticationError("the admin API is disabled: no admin token is configured")
    if given is None or not secrets.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise AuthenticationError("admin token required", code="invalid_admin_token")


AdminDep = Depends(_admin)
