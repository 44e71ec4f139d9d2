"""Upstream faults through the whole gateway, and what the customer is charged for them.

Complements test_gateway_remote (which holds 5xx retry, fallback and a cut stream's
usage): here a timeout, a reset connection and half a stream each end in a clear
error or a served fallback, and a prepaid wallet pays only for what was delivered.
The mock upstream reports 13 prompt and 9 completion tokens for every full answer.
"""

from __future__ import annotations

import time
from decimal import Decimal

import openai
import pytest

from modelmint.billing import FlatRate, Metric, PrepaidPlan, PriceBook
from modelmint.billing.store import BillingStore
from modelmint.serving.token_estimate import estimate_tokens
from tests.integration.test_gateway_billing import subscribe
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    BACKUP_REPLY,
    MESSAGES,
    Gateway,
    backup,
    gateway,
    sse_payloads,
    upstream,
)
from tests.support.mock_upstream import MockUpstream

D = Decimal
PER_TOKEN, PER_REQUEST = D("0.01"), D("0.05")
PRICES = PriceBook(
    "USD",
    {
        ("*", Metric.OUTPUT_TOKENS): FlatRate(PER_TOKEN),
        ("*", Metric.REQUESTS): FlatRate(PER_REQUEST),
    },
)
CREDIT = "10.00"
# A bound on output, so that admission can reserve the worst case from the wallet.
CHAT = {"model": "remote-chat", "messages": MESSAGES, "max_tokens": 50}


def spent(gw: Gateway) -> Decimal:
    """What the organisation's wallet has paid so far: its own ledger, and what requests
    consumed through credit leases that their next renewal posts to the ledger."""
    with gw.database.session() as session:
        store = BillingStore(session)
        wallet = store.wallets.load_wallet(gw.org_id, "USD")
        left = store.ledger.audit_wallet(wallet.id)
        pending = store.wallets.credit_pending(wallet.id)
    return D(CREDIT) - left.amount + pending


async def test_an_upstream_timeout_is_a_clear_504_and_costs_nothing(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("remote-chat", upstream, timeout_s=0.3, max_retries=0)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit=CREDIT)
    upstream.delay_s = 30.0
    started = time.monotonic()

    response = await gateway.http.post("/v1/chat/completions", json=CHAT)

    upstream.release()
    assert time.monotonic() - started < 5  # the configured timeout, not the upstream's delay
    assert response.status_code == 504
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("api_error", "timeout")
    [row] = await gateway.usage_rows()
    assert (row.status_code, row.input_tokens, row.output_tokens) == (504, 0, 0)
    assert not row.charge
    assert spent(gateway) == 0


async def test_a_timeout_falls_back_to_the_backup_model(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
    backup: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("backup-chat", backup)
    await gateway.serve(
        "remote-chat", upstream, timeout_s=0.3, max_retries=0, fallback="backup-chat"
    )
    upstream.delay_s = 30.0

    answer = await gateway.sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]

    upstream.release()
    assert answer.choices[0].message.content == BACKUP_REPLY
    [row] = await gateway.usage_rows()
    assert (row.status_code, row.input_tokens, row.output_tokens) == (200, 21, 5)


@pytest.mark.parametrize(("resets", "status"), [(1, 200), (2, 502)])
async def test_a_reset_connection_is_retried_once_then_reported(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
    resets: int,
    status: int,
) -> None:
    await gateway.serve("remote-chat", upstream, max_retries=1)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit=CREDIT)
    upstream.reset_next(resets)

    response = await gateway.http.post("/v1/chat/completions", json=CHAT)

    assert response.status_code == status
    assert len(upstream.requests) == 2  # the first try and its one retry
    [row] = await gateway.usage_rows()
    if status == 200:
        assert (row.input_tokens, row.output_tokens) == (13, 9)
        assert spent(gateway) == 9 * PER_TOKEN + PER_REQUEST
    else:
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("api_error", "bad_gateway")
        assert "upstream" in error["message"]
        assert (row.status_code, row.output_tokens) == (502, 0)
        assert spent(gateway) == 0


async def test_half_a_stream_is_charged_for_the_delivered_part_only(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("remote-chat", upstream, max_retries=0)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit=CREDIT)
    upstream.cut_stream_after = 4  # "The quick brown fox " and then the connection drops

    response = await gateway.http.post("/v1/chat/completions", json={**CHAT, "stream": True})

    events = sse_payloads(response.text)
    delivered = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert delivered == "The quick brown fox "
    assert events[-1]["error"]["code"] == "bad_gateway"  # a clear error, in-band
    [row] = await gateway.usage_rows()
    assert row.output_tokens == estimate_tokens(delivered) < 9
    assert row.charge == row.output_tokens * PER_TOKEN + PER_REQUEST
    assert spent(gateway) == row.charge


async def test_a_garbled_answer_is_a_502_and_costs_nothing(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
) -> None:
    await gateway.serve("remote-chat", upstream, max_retries=0)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit=CREDIT)
    upstream.garble_next(1)

    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]

    assert caught.value.status_code == 502
    assert spent(gateway) == 0
