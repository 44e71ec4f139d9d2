"""``PaymentProvider`` on Stripe, through the official SDK.

The secret key comes from the environment variable that settings name
(``MODELMINT_STRIPE_SECRET_KEY_ENV``, default ``STRIPE_SECRET_KEY``) and is never
stored. ``api_base`` points the SDK elsewhere: at localstripe in tests and on a
machine without Stripe.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import stripe

from modelmint.errors import InvalidRequest
from modelmint.payments.provider import (
    PAYMENT_METADATA_KEY,
    Charge,
    ChargeStatus,
    InvalidSignature,
    PaymentProviderError,
    ProviderEvent,
    SavedMethod,
    SetupStart,
)

__all__ = ["EVENT_TYPES", "StripeProvider"]

# Intent states, as Stripe names them, to what a ModelMint payment makes of them.
_INTENT_STATUS = {
    "succeeded": ChargeStatus.SUCCEEDED,
    "processing": ChargeStatus.PROCESSING,
    "requires_action": ChargeStatus.REQUIRES_ACTION,
    "requires_confirmation": ChargeStatus.REQUIRES_ACTION,
    "requires_payment_method": ChargeStatus.FAILED,
    "canceled": ChargeStatus.FAILED,
}
_EVENT_STATUS = {
    "payment_intent.succeeded": ChargeStatus.SUCCEEDED,
    "payment_intent.processing": ChargeStatus.PROCESSING,
    "payment_intent.payment_failed": ChargeStatus.FAILED,
    "payment_intent.requires_action": ChargeStatus.REQUIRES_ACTION,
    "payment_intent.canceled": ChargeStatus.FAILED,
}
# The events a webhook endpoint should be subscribed to.
EVENT_TYPES = tuple(_EVENT_STATUS)


class StripeProvider:
    name = "stripe"

    def __init__(
        self,
        secret_key: str,
        *,
        webhook_secret: str | None,
        publishable_key: str | None = None,
        api_base: str | None = None,
        tolerance_s: int = 300,
        max_network_retries: int = 2,
    ) -> None:
        addresses: Any = {"api": api_base} if api_base else None
        self._client = stripe.StripeClient(
            secret_key, base_addresses=addresses, max_network_retries=max_network_retries
        )
        self._webhook_secret = webhook_secret
        self._publishable_key = publishable_key
        self._tolerance_s = tolerance_s

    @property
    def publishable_key(self) -> str | None:
        return self._publishable_key

    def create_customer(
        self, *, name: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        with _provider_errors("create a customer"):
            customer = self._client.v1.customers.create(
                params={"name": name, "metadata": dict(metadata)},
                options={"idempotency_key": idempotency_key},
            )
        return str(customer.id)

    def start_setup(self, customer_id: str, *, idempotency_key: str) -> SetupStart:
        with _provider_errors("start saving a payment method"):
            params: Any = {
                "customer": customer_id,
                "payment_method_types": ["card"],
                "usage": "off_session",
            }
            intent = self._client.v1.setup_intents.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        return SetupStart(setup_intent_id=str(intent.id), client_secret=str(intent.client_secret))

    def finish_setup(self, customer_id: str, setup_intent_id: str) -> SavedMethod:
        with _provider_errors("read the saved payment method"):
            intent = self._client.v1.setup_intents.retrieve(setup_intent_id)
        if intent.status != "succeeded" or not intent.payment_method:
            raise InvalidRequest(
                f"setup {setup_intent_id} is {intent.status}, not succeeded: the card was "
                "not confirmed (or its bank's authentication was not completed)",
                code="setup_not_confirmed",
            )
        method = intent.payment_method
        method_id = method if isinstance(method, str) else str(method.id)
        return self.attach_method(
            customer_id, method_id, idempotency_key=f"attach-{setup_intent_id}"
        )

    def attach_method(
        self, customer_id: str, payment_method_id: str, *, idempotency_key: str
    ) -> SavedMethod:
        with _provider_errors("save the payment method"):
            method = self._client.v1.payment_methods.retrieve(payment_method_id)
            # A SetupIntent with a customer attaches on confirmation; attach only if not.
            if not method.customer:
                method = self._client.v1.payment_methods.attach(
                    payment_method_id,
                    params={"customer": customer_id},
                    options={"idempotency_key": idempotency_key},
                )
            elif method.customer != customer_id:
                raise InvalidRequest(
                    f"payment method {payment_method_id} belongs to another customer"
                )
        return SavedMethod(payment_method_id=payment_method_id, label=_label(method))

    def charge(
        self,
        *,
        customer_id: str,
        payment_method_id: str,
        amount_minor: int,
        currency: str,
        description: str,
        metadata: Mapping[str, str],
        idempotency_key: str,
    ) -> Charge:
        try:
            intent = self._client.v1.payment_intents.create(
                params={
                    "amount": amount_minor,
                    "currency": currency.lower(),
                    "customer": customer_id,
                    "payment_method": payment_method_id,
                    "off_session": True,
                    "confirm": True,
                    # In metadata rather than ``description``, which localstripe refuses.
                    "metadata": {**metadata, "modelmint_for": description},
                },
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            # A decline is an answer, not an outage: the payment records it and dunning
            # takes over. Stripe names the failed intent in the error (localstripe does not).
            error: Any = exc.error
            failed = getattr(error, "payment_intent", None) if error is not None else None
            intent_id = str(failed["id"]) if failed else None
            status = (
                ChargeStatus.REQUIRES_ACTION
                if exc.code == "authentication_required"
                else ChargeStatus.FAILED
            )
            return Charge(status, intent_id, exc.user_message or str(exc.code or "declined"))
        except stripe.StripeError as exc:
            raise PaymentProviderError(
                f"the payment provider failed to charge: {_why(exc)}"
            ) from exc
        status = _INTENT_STATUS.get(str(intent.status), ChargeStatus.PROCESSING)
        failure = None
        if status is ChargeStatus.REQUIRES_ACTION:
            failure = "the card's bank asks the customer to authenticate this payment"
        return Charge(status, str(intent.id), failure)

    def refund(self, intent_id: str, *, amount_minor: int, idempotency_key: str) -> str:
        with _provider_errors("refund the payment"):
            refund = self._client.v1.refunds.create(
                params={"payment_intent": intent_id, "amount": amount_minor},
                options={"idempotency_key": idempotency_key},
            )
        return str(refund.id)

    def event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        if not self._webhook_secret:
            raise InvalidSignature("no webhook secret is configured: events cannot be verified")
        try:
            event = stripe.Webhook.construct_event(
                payload, signature or "", self._webhook_secret, tolerance=self._tolerance_s
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidSignature(f"webhook signature does not verify: {exc}") from None
        except ValueError as exc:
            raise InvalidSignature(f"webhook payload is not a Stripe event: {exc}") from None
        kind = str(event.type)
        status = _EVENT_STATUS.get(kind)
        if status is None:
            return ProviderEvent(str(event.id), kind, None, None, None)
        obj: dict[str, Any] = event.data.object.to_dict()
        metadata = obj.get("metadata") or {}
        error = obj.get("last_payment_error") or {}
        return ProviderEvent(
            id=str(event.id),
            type=kind,
            intent_id=str(obj.get("id")),
            payment_id=metadata.get(PAYMENT_METADATA_KEY),
            status=status,
            amount_minor=obj.get("amount"),
            failure=error.get("message") if status is ChargeStatus.FAILED else None,
        )


@contextmanager
def _provider_errors(doing: str) -> Iterator[None]:
    """Turn the SDK's errors into ``PaymentProviderError`` naming what was being done."""
    try:
        yield
    except stripe.StripeError as exc:
        raise PaymentProviderError(f"the payment provider could not {doing}: {_why(exc)}") from exc


def _why(exc: stripe.StripeError) -> str:
    return exc.user_message or str(exc) or type(exc).__name__


def _label(method: Any) -> str:
    data: dict[str, Any] = method.to_dict()
    card = data.get("card")
    if card:
        return f"{card.get('brand') or 'card'} {card.get('last4') or ''}".strip()
    return str(data.get("type") or "payment method")
