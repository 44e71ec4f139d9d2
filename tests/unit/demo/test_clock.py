"""The demo clock dates a request in the past only for a demo organisation, with the admin
token, on a server that allows it; otherwise it refuses, and a request that does not ask
is metered now."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from modelmint import accounts
from modelmint.accounts.keys import KeyInfo
from modelmint.config import Settings
from modelmint.demo.clock import DemoClock
from modelmint.demo.names import DEMO_ADMIN_HEADER, DEMO_TIME_HEADER
from modelmint.errors import AuthenticationError, InvalidRequest, PermissionDenied
from modelmint.storage import Database, migrate

ADMIN_TOKEN = "demo-clock-admin-token"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'clock.db'}")
    migrate(database)
    yield database
    database.dispose()


def _key_of(database: Database, organization: str) -> KeyInfo:
    with database.session() as session:
        org = accounts.create_org(session, organization)
        organization_id = org.id
    return KeyInfo(
        id="key",
        organization_id=organization_id,
        prefix="mm-",
        models=None,
        rpm_limit=None,
        tpm_limit=None,
        expires_at=None,
        revoked=False,
    )


def _clock(database: Database, *, time_travel: bool = True) -> DemoClock:
    settings = Settings(admin_token=SecretStr(ADMIN_TOKEN), demo_time_travel=time_travel)
    return DemoClock(settings, database)


def _scope(at: str | None, token: str | None = ADMIN_TOKEN) -> dict[str, object]:
    headers = [(b"authorization", b"Bearer mm-secret")]
    if at is not None:
        headers.append((DEMO_TIME_HEADER.lower().encode(), at.encode()))
    if token is not None:
        headers.append((DEMO_ADMIN_HEADER.lower().encode(), token.encode()))
    return {"type": "http", "headers": headers}


async def test_a_request_that_does_not_ask_is_metered_now(database: Database) -> None:
    key = _key_of(database, "acme")
    assert await _clock(database, time_travel=False).requested_time(_scope(None), key) is None


async def test_a_demo_organisation_with_the_admin_token_is_dated_in_the_past(
    database: Database,
) -> None:
    key = _key_of(database, "demo-aurora")
    moment = datetime.now(UTC) - timedelta(days=12)
    at = await _clock(database).requested_time(_scope(moment.isoformat()), key)
    assert at == moment


async def test_a_server_without_time_travel_refuses_to_date(database: Database) -> None:
    key = _key_of(database, "demo-aurora")
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    with pytest.raises(PermissionDenied) as refused:
        await _clock(database, time_travel=False).requested_time(_scope(past), key)
    assert refused.value.code == "demo_time_travel_disabled"


@pytest.mark.parametrize("token", [None, "a-wrong-token"])
async def test_dating_needs_the_admin_token(database: Database, token: str | None) -> None:
    key = _key_of(database, "demo-aurora")
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    with pytest.raises(AuthenticationError) as refused:
        await _clock(database).requested_time(_scope(past, token), key)
    assert refused.value.code == "invalid_admin_token"


async def test_only_a_demo_organisation_may_be_dated(database: Database) -> None:
    key = _key_of(database, "acme")
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    with pytest.raises(PermissionDenied):
        await _clock(database).requested_time(_scope(past), key)


@pytest.mark.parametrize(
    "given",
    [
        "yesterday",
        "2026-01-01T00:00:00",  # no offset
        (datetime.now(UTC) + timedelta(hours=1)).isoformat(),  # the future
        (datetime.now(UTC) - timedelta(days=401)).isoformat(),  # too long ago
    ],
)
async def test_an_instant_that_is_not_a_recent_past_one_is_refused(
    database: Database, given: str
) -> None:
    key = _key_of(database, "demo-aurora")
    with pytest.raises(InvalidRequest):
        await _clock(database).requested_time(_scope(given), key)
