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

The platform holds one ``DemoClock``; the paid routes ask it once per request and hand
the instant to the inference service with the request, so nothing but that request
ever sees it.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timedelta

from starlette.types import Scope

from modelmint import accounts
from modelmint.accounts.keys import KeyInfo
from modelmint.clock import utcnow
from modelmint.config import Settings
from modelmint.demo.names import DEMO_ADMIN_HEADER, DEMO_PREFIX, DEMO_TIME_HEADER
from modelmint.errors import AuthenticationError, InvalidRequest, PermissionDenied
from modelmint.storage.db import Database
from modelmint.web.middleware import header

__all__ = ["DemoClock"]

# Lower case, as ASGI gives header names.
_TIME_HEADER = DEMO_TIME_HEADER.lower()
_TIME_KEY = _TIME_HEADER.encode()
_ADMIN_KEY = DEMO_ADMIN_HEADER.lower().encode()
_OLDEST = timedelta(days=400)
_CLOCK_SKEW = timedelta(minutes=1)


class DemoClock:
    """When a request asks to be metered, if it may ask: the demo's clock."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self._settings = settings
        self._database = database

    async def requested_time(self, scope: Scope, key: KeyInfo) -> datetime | None:
        """The instant a request asks to be metered at, if it asks and may; None if it
        does not ask (it is metered now). ``PermissionDenied``, ``AuthenticationError``
        or ``InvalidRequest`` if it asks and may not."""
        raw = header(scope, _TIME_KEY)
        if raw is None:
            return None
        settings = self._settings
        if not settings.demo_time_travel:
            raise PermissionDenied(
                "demo time travel is off on this server (MODELMINT_DEMO_TIME_TRAVEL)",
                code="demo_time_travel_disabled",
            )
        given = header(scope, _ADMIN_KEY)
        expected = settings.admin_token
        if (
            expected is None
            or given is None
            or not secrets.compare_digest(given.encode(), expected.get_secret_value().encode())
        ):
            raise AuthenticationError(
                "demo time travel needs the admin token", code="invalid_admin_token"
            )
        if not (await self._organization_name(key)).startswith(DEMO_PREFIX):
            raise PermissionDenied(
                f"only demo organisations ({DEMO_PREFIX}*) can be metered in the past"
            )
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidRequest(f"{_TIME_HEADER}: {raw!r} is not an ISO 8601 instant") from None
        now = utcnow()
        if moment.tzinfo is None or not now - _OLDEST <= moment <= now + _CLOCK_SKEW:
            raise InvalidRequest(
                f"{_TIME_HEADER} must be a past instant with a UTC offset, at most "
                f"{_OLDEST.days} days ago"
            )
        return moment

    async def _organization_name(self, key: KeyInfo) -> str:
        def name() -> str:
            with self._database.session() as session:
                return accounts.get_org(session, key.organization_id).name

        # On a worker thread, as every database read of a request: only demo requests
        # that ask to travel get here.
        return await asyncio.to_thread(name)
