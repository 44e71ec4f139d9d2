"""Requests refused before any model work (401, 402, 429 of a known key) are recorded:
the usage explorer finds them by status and the organisation's own usage counts them,
with no charge and no tokens, and the rollups (usage, revenue, error rates) leave them
out. A secret that names no key belongs to nobody: it stays in Prometheus only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest
from sqlalchemy import func, select

from modelmint import accounts
from modelmint.analytics.explorer import UsageFilter, explore_usage
from modelmint.billing import PrepaidPlan
from modelmint.storage.tables import AnalyticsUsageHourly, UsageRecord, UsageRollup
from tests.integration.test_gateway_billing import PRICES, ask, subscribe
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    MESSAGES,
    Gateway,
    gateway,
    upstream,
)
from tests.support.mock_upstream import MockUpstream


def found(gw: Gateway, status: str) -> list[tuple[str, str, int, object]]:
    with gw.database.session() as session:
        page = explore_usage(session, UsageFilter(status=status))
    return [(row.api_key_id, row.model, row.output_tokens, row.charge) for row in page.rows]


def rolled_up(gw: Gateway) -> tuple[int, int, int]:
    """Requests and errors in the hourly analytics rollups; rows of the usage rollups."""
    with gw.database.session() as session:
        requests, errors = session.execute(
            select(
                func.coalesce(func.sum(AnalyticsUsageHourly.requests), 0),
                func.coalesce(func.sum(AnalyticsUsageHourly.errors), 0),
            )
        ).one()
        usage = session.scalar(select(func.count()).select_from(UsageRollup))
    assert usage is not None
    return int(requests), int(errors), usage


async def test_a_402_is_recorded_without_charge_and_left_out_of_the_rollups(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit="1.00")
    await ask(gateway)  # one answered request: 1 in the rollups
    await gateway.usage_rows()
    before = rolled_up(gateway)
    with pytest.raises(openai.APIStatusError) as refused:  # worst case 41.01 > what is left
        await gateway.sdk.chat.completions.create(model="mock", messages=MESSAGES)
    assert refused.value.status_code == 402

    rows = await gateway.usage_rows()
    assert sorted(r.status_code for r in rows) == [200, 402]
    assert found(gateway, "402") == [(gateway.key_id, "mock", 0, None)]
    assert rolled_up(gateway) == before  # no request, no error, no revenue added
    assert len(upstream.requests) == 1


async def test_a_rate_limited_request_is_recorded_as_a_429(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    with gateway.database.session() as session:
        org = accounts.get_org(session, gateway.org_id)
        key, secret = accounts.create_key(session, org, name="slow", rpm_limit=1)
        key_id = key.id
    client = openai.AsyncOpenAI(
        base_url="http://gw/v1",
        api_key=secret,
        http_client=httpx.AsyncClient(transport=gateway.http._transport),  # type: ignore[arg-type]
        max_retries=0,
    )
    await client.chat.completions.create(model="mock", messages=MESSAGES, max_tokens=5)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="mock", messages=MESSAGES, max_tokens=5)

    await gateway.usage_rows()
    assert found(gateway, "429") == [(key_id, "mock", 0, None)]
    assert found(gateway, "ok") == [(key_id, "mock", 9, None)]


async def test_an_expired_key_is_recorded_but_a_revoked_or_unknown_one_is_not(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("mock", upstream)
    with gateway.database.session() as session:
        org = accounts.get_org(session, gateway.org_id)
        expired, expired_secret = accounts.create_key(
            session, org, name="old", expires_at=datetime.now(UTC) + timedelta(days=1)
        )
        expired.expires_at = datetime.now(UTC) - timedelta(days=1)  # a day has passed
        revoked, revoked_secret = accounts.create_key(session, org, name="gone")
        expired_id = expired.id
        accounts.revoke_key(session, revoked.id)
    body = {"model": "mock", "messages": MESSAGES}
    answers = [
        await gateway.http.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        for secret in (expired_secret, revoked_secret, "mm-nobody")
    ]

    codes = [(a.status_code, a.json()["error"]["code"]) for a in answers]
    assert codes == [(401, "expired_api_key"), (401, "revoked_api_key"), (401, "invalid_api_key")]
    await gateway.usage_rows()
    # Revoked keys are left out: every key of an erased organisation is revoked.
    assert found(gateway, "401") == [(expired_id, "mock", 0, None)]
    with gateway.database.session() as session:
        assert session.scalar(select(func.count()).select_from(UsageRecord)) == 1
