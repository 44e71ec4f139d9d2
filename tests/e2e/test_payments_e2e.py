"""Getting paid through a real server: `modelmint up`, the CLI, and localstripe as Stripe.

localstripe delivers its signed webhooks over HTTP to the server's /webhooks/stripe;
a blocked organisation's key is refused through the official openai SDK.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.support.localstripe import (
    DECLINED_CARD,
    GOOD_CARD,
    MONTHLY_PLAN,
    SECRET_KEY,
    WEBHOOK_SECRET,
    LocalStripe,
    intent_event,
    signed_event,
)
from tests.support.processes import Server, cli, cli_json

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path, localstripe: LocalStripe) -> Iterator[Server]:
    running = Server(
        home=tmp_path,
        extra_env={
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "MODELMINT_STRIPE_API_BASE": localstripe.api_base,
            "MODELMINT_LOAD_BUNDLED_MODELS": "false",
            "MODELMINT_PAYMENT_GRACE_DAYS": "0",
        },
    )
    running.start()
    localstripe.register_webhook(
        f"modelmint-{running.port}", f"{running.url}/webhooks/stripe", None
    )
    try:
        yield running
    finally:
        running.stop()


def admin(server: Server) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=30
    )


def closed_month(server: Server, tmp_path: Path) -> dict[str, Any]:
    plan = tmp_path / "pro.json"
    plan.write_text(json.dumps(MONTHLY_PLAN))
    cli(server.env, "plans", "publish", str(plan))
    cli(server.env, "orgs", "create", "acme")
    cli(
        server.env,
        "subscriptions",
        "subscribe",
        "--org",
        "acme",
        "--plan",
        "pro",
        "--at",
        "2026-11-01",
    )
    [invoice] = cli_json(server.env, "invoices", "close", "--period", "2026-11")
    assert invoice["status"] == "finalized"
    return dict(invoice)


def wait_for_event(client: httpx.Client, payment_id: str, kind: str) -> dict[str, Any]:
    """Poll the payment until the provider's webhook for it has been applied."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        payment = client.get(f"/admin/payments/{payment_id}").json()
        if any(event["type"] == kind for event in payment["events"]):
            return dict(payment)
        time.sleep(0.1)
    raise AssertionError(f"no {kind} webhook for {payment_id} within 20 s")


def test_a_customer_saves_a_card_and_the_month_is_collected_and_confirmed(
    server: Server, localstripe: LocalStripe, tmp_path: Path
) -> None:
    invoice = closed_month(server, tmp_path)
    with admin(server) as client:
        setup = client.post("/admin/payments/organizations/acme/setup-intents").json()
        localstripe.confirm_setup(setup["setup_intent"], localstripe.card(GOOD_CARD))
        saved = client.put(
            "/admin/payments/organizations/acme/payment-method",
            json={"setup_intent": setup["setup_intent"]},
        )
        assert saved.status_code == 200, saved.text
        assert saved.json()["payment_method_label"] == "visa 4242"

        payment = cli_json(server.env, "payments", "collect", invoice["id"])

        assert payment["status"] == "succeeded"
        confirmed = wait_for_event(client, payment["id"], "payment_intent.succeeded")
    assert confirmed["events"][-1]["outcome"] == "already_final"  # paid once, confirmed once
    shown = orjson.loads(cli(server.env, "invoices", "show", invoice["id"]).stdout)
    assert shown["status"] == "paid"
    total_minor = int(shown["total"].replace(".", ""))
    assert payment["amount_minor"] == total_minor == 3000
    charged = localstripe.client.v1.payment_intents.retrieve(payment["intent_id"])
    assert (charged.amount, charged.status) == (total_minor, "succeeded")

    rule = ("--org", "acme", "--below", "5.00", "--amount", "20.00")
    assert cli_json(server.env, "payments", "auto-top-up", *rule)["auto_top_up"] == {
        "below": "5.00",
        "amount": "20.00",
        "currency": "USD",
    }
    half = cli(server.env, "payments", "auto-top-up", "--org", "acme", "--below", "1", check=False)
    assert half.returncode == 2 and "--below and --amount" in half.stderr
    off = cli_json(server.env, "payments", "auto-top-up", "--org", "acme", "--off")
    assert off["auto_top_up"] is None


def test_a_declined_month_blocks_the_keys_until_a_payment_succeeds(
    server: Server, localstripe: LocalStripe, tmp_path: Path
) -> None:
    invoice = closed_month(server, tmp_path)
    secret = cli_json(server.env, "keys", "create", "--org", "acme")["key"]
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)
    assert sdk.models.list().data == []  # the key works
    with admin(server) as client:
        client.put(
            "/admin/payments/organizations/acme/payment-method",
            json={"payment_method": localstripe.card(DECLINED_CARD)},
        ).raise_for_status()
        declined = cli(server.env, "payments", "collect", invoice["id"], check=False)
        assert declined.returncode == 4 and "declined" in declined.stdout
        failed = client.get("/admin/payments", params={"org": "acme"}).json()[0]
        wait_for_event(client, failed["id"], "payment_intent.payment_failed")
        # Grace is zero days here: the next dunning run blocks the organisation.
        assert client.post("/admin/payments/dunning/run").json()["blocked"]

        with pytest.raises(openai.APIStatusError) as refused:
            sdk.models.list()
        assert refused.value.status_code == 402
        assert refused.value.body["code"] == "payment_required"  # type: ignore[index]

        client.put(
            "/admin/payments/organizations/acme/payment-method",
            json={"payment_method": localstripe.card(GOOD_CARD)},
        ).raise_for_status()
        paid = client.post(f"/admin/payments/{failed['id']}/retry").json()
    assert paid["status"] == "succeeded"
    assert (
        orjson.loads(cli(server.env, "invoices", "show", invoice["id"]).stdout)["status"] == "paid"
    )
    deadline = time.monotonic() + 10  # the key cache refreshes within cache_ttl_s
    while True:
        try:
            assert sdk.models.list().data == []
            break
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_webhook_that_does_not_verify_is_a_400_and_changes_nothing(
    server: Server, tmp_path: Path
) -> None:
    closed_month(server, tmp_path)
    event = intent_event("evt_forged", "payment_intent.succeeded", "pi_1", "pay_1", 3000)
    payload, forged = signed_event(event, secret="whsec_not_ours")
    _, stale = signed_event(event, at=int(time.time()) - 3600)
    for signature in (forged, stale, None):
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        answer = httpx.post(f"{server.url}/webhooks/stripe", content=payload, headers=headers)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_signature"
    payload, good = signed_event(event)
    answer = httpx.post(
        f"{server.url}/webhooks/stripe", content=payload, headers={"Stripe-Signature": good}
    )
    assert answer.json() == {"received": True, "id": "evt_forged", "outcome": "ignored"}
    with admin(server) as client:
        assert client.get("/admin/payments").json() == []
    assert cli_json(server.env, "invoices", "list", "--org", "acme")[0]["status"] == "finalized"
