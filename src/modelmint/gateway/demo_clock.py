"""Time travel for demo data: metering a demo organisation's request in the past.

``modelmint demo traffic`` builds a month of history through the real API, so each
of its requests says when it should have happened (``X-ModelMint-Demo-Time``, ISO
8601 with an offset). The gateway honours that only when all of these hold, and
refuses the request otherwise (it is never silently metered at another time):

* the server runs with ``MODELMINT_DEMO_TIME_TRAVEL=true`` (off by default);
* the request also carries the admin token (``X-ModelMint-Admin-Token``), so a
  customer holding only an API key can never backdate anything;
* the key belongs to an organisation whose name starts with ``demo-``;
* the instant is in the past, at most 400 days ago.

The instant then dates the usage record (so its charge lands in that month's
period, and its rollups in that hour) and is echoed in the answer's header.
"""

from __future__ import annotations

import secrets
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session
from starlette.types import Scope

from modelmint import accounts
from modelmint.accounts.keys import KeyInfo
from modelmint.clock import utcnow
from modelmint.errors import AuthenticationError, InvalidRequest, PermissionDenied
from modelmint.gateway.middleware import header

if TYPE_CHECKING:  # the platform imports the inference service, which imports this
    from modelmint.gateway.platform import Platform

__all__ = ["DEMO_ADMIN_HEADER", "DEMO_TIME_HEADER", "requested_time", "usage_time"]

DEMO_TIME_HEADER = "x-modelmint-demo-time"
DEMO_ADMIN_HEADER = "x-modelmint-admin-token"
DEMO_PREFIX = "demo-"
_OLDEST = timedelta(days=400)
_CLOCK_SKEW = timedelta(minutes=1)

# When the request being served is to be metered; None: now. Set per request task.
usage_time: ContextVar[datetime | None] = ContextVar("usage_time", default=None)


async def requested_time(platform: Platform, scope: Scope, key: KeyInfo) -> datetime | None:
    """The instant a request asks to be metered at, if it asks and may; None if it does
    not ask. ``PermissionDenied``, ``AuthenticationError`` or ``InvalidRequest`` if it
    asks and may not."""
    raw = header(scope, DEMO_TIME_HEADER.encode())
    if raw is None:
        return None
    settings = platform.settings
    if not settings.demo_time_travel:
        raise PermissionDenied(
            "demo time travel is off on this server (MODELMINT_DEMO_TIME_TRAVEL)",
            code="demo_time_travel_disabled",
        )
    given = header(scope, DEMO_ADMIN_HEADER.encode())
    expected = settings.admin_token
    if (
        expected is None
        or given is None
        or not secrets.compare_digest(given.encode(), expected.get_secret_value().encode())
    ):
        raise AuthenticationError(
            "demo time travel needs the admin token", code="invalid_admin_token"
        )

    def name(session: Session) -> str:
        return accounts.get_org(session, key.organization_id).name

    if not (await platform.in_session(name)).startswith(DEMO_PREFIX):
        raise PermissionDenied(
            f"only demo organisations ({DEMO_PREFIX}*) can be metered in the past"
        )
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{DEMO_TIME_HEADER}: {raw!r} is not an ISO 8601 instant") from None
    now = utcnow()
    if moment.tzinfo is None or not now - _OLDEST <= moment <= now + _CLOCK_SKEW:
        raise InvalidRequest(
            f"{DEMO_TIME_HEADER} must be a past instant with a UTC offset, at most "
            f"{_OLDEST.days} days ago"
        )
    return moment
