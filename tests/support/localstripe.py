"""localstripe (a stateful fake Stripe server) in its own process, for payment tests.

The official SDK talks to it through ``api_base``; it signs and delivers webhooks to
the URL registered with ``register_webhook``, about a second after each event.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import stripe

from tests.support.processes import free_port

SECRET_KEY = "sk_test_modelmint"
WEBHOOK_SECRET = "whsec_modelmint_test"
# Cards localstripe (like Stripe's test mode) treats specially.
GOOD_CARD = "4242424242424242"
DECLINED_CARD = "4000000000000341"  # attaches, then every charge is declined
AUTHENTICATION_CARD = "4000002500003155"  # charges need 3-D Secure

# A plan whose month costs exactly 30.00 USD: its closed month is an invoice to collect.
MONTHLY_PLAN: dict[str, Any] = {
    "kind": "subscription",
    "code": "pro",
    "version": 1,
    "fee": {"amount": "30.00", "currency": "USD"},
    "included": {},
    "price_book": {"currency": "USD", "prices": [], "model_groups": {}},
}


class LocalStripe:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._log = (workdir / "localstripe.log").open("ab")
        # --from-scratch: never load another run's state (it pickles to /tmp on exit).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localstripe", "--port", str(self.port), "--from-scratch"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError("localstripe exited early; see localstripe.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise AssertionError("localstripe did not start")
        self.client = stripe.StripeClient(SECRET_KEY, base_addresses={"api": self.api_base})

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def register_webhook(self, name: str, url: str, events: list[str] | None = None) -> None:
        body: dict[str, Any] = {"url": url, "secret": WEBHOOK_SECRET}
        if events is not None:
            body["events"] = events
        response = httpx.post(f"{self.api_base}/_config/webhooks/{name}", json=body)
        response.raise_for_status()

    def card(self, number: str) -> str:
        """A card payment method, as Stripe.js would create it in the browser."""
        method = self.client.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            }
        )
        return str(method.id)

    def confirm_setup(self, setup_intent: str, payment_method: str) -> None:
        """What Stripe.js's confirmCardSetup does in the portal."""
        self.client.v1.setup_intents.confirm(
            setup_intent, params={"payment_method": payment_method}
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def signed_event(
    event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, at: int | None = None
) -> tuple[bytes, str]:
    """An event body and its Stripe-Signature header, signed as Stripe signs them."""
    payload = orjson.dumps(event)
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256
    ).hexdigest()
    return payload, f"t={timestamp},v1={digest}"


def intent_event(
    event_id: str, kind: str, intent_id: str, payment_id: str, amount: int
) -> dict[str, Any]:
    """A ``payment_intent.*`` event in Stripe's shape."""
    status = {
        "payment_intent.succeeded": "succeeded",
        "payment_intent.payment_failed": "requires_payment_method",
    }[kind]
    obj: dict[str, Any] = {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "currency": "usd",
        "status": status,
        "metadata": {"modelmint_payment": payment_id},
    }
    if status != "succeeded":
        obj["last_payment_error"] = {"message": "Your card was declined."}
    return {
        "id": event_id,
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "api_version": "2017-08-15",
        "data": {"object": obj},
    }
