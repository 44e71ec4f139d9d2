"""What ModelMint needs from a payment provider, and what it hears back.

The rest of ``payments`` talks to this Protocol only: ``StripeProvider`` is the real
adapter, unit tests use a small fake. Amounts cross it as integer minor units (as
providers take them), ids as the provider's own strings. Every write carries an
idempotency key, so a call repeated after a timeout cannot charge twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from modelmint.errors import InvalidRequest, ModelMintError

__all__ = [
    "PAYMENT_METADATA_KEY",
    "Charge",
    "ChargeStatus",
    "InvalidSignature",
    "PaymentProvider",
    "PaymentProviderError",
    "ProviderEvent",
    "SavedMethod",
    "SetupStart",
]


# Every intent carries ModelMint's payment id under this metadata key: a webhook event
# is matched to its payment by it, whatever order events come in.
PAYMENT_METADATA_KEY = "modelmint_payment"


class PaymentProviderError(ModelMintError):
    """The provider could not be reached or refused a call for a reason not the card's."""

    status_code = 502
    error_type = "api_error"
    code = "payment_provider_error"
    exit_code = 6


class InvalidSignature(InvalidRequest):
    """A webhook whose signature or timestamp does not verify: nothing is applied."""

    code = "invalid_signature"


class ChargeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    # Accepted, the outcome comes later by webhook (bank debits, slow networks).
    PROCESSING = "processing"
    # The card's bank wants the customer present (3-D Secure): off-session it fails.
    REQUIRES_ACTION = "requires_action"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Charge:
    """What one attempt to take money came to."""

    status: ChargeStatus
    intent_id: str | None
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class SetupStart:
    """A started SetupIntent: the portal confirms it in the browser with its secret."""

    setup_intent_id: str
    client_secret: str


@dataclass(frozen=True, slots=True)
class SavedMethod:
    payment_method_id: str
    label: str  # e.g. "visa 4242"


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """A verified webhook event, reduced to what ModelMint acts on.

    ``payment_id`` is ModelMint's own payment id, carried in the intent's metadata;
    ``status`` is None for an event type ModelMint does not act on.
    """

    id: str
    type: str
    intent_id: str | None
    payment_id: str | None
    status: ChargeStatus | None
    amount_minor: int | None = None
    failure: str | None = None


class PaymentProvider(Protocol):
    name: str

    @property
    def publishable_key(self) -> str | None: ...

    def create_customer(
        self, *, name: str, metadata: Mapping[str, str], idempotency_key: str
    ) -> str:
        """A new customer; returns its id."""
        ...

    def start_setup(self, customer_id: str, *, idempotency_key: str) -> SetupStart:
        """A SetupIntent for saving a method to charge later, off session."""
        ...

    def finish_setup(self, customer_id: str, setup_intent_id: str) -> SavedMethod:
        """The method a succeeded SetupIntent saved, attached to the customer."""
        ...

    def attach_method(
        self, customer_id: str, payment_method_id: str, *, idempotency_key: str
    ) -> SavedMethod:
        """Attach an existing payment method (created by Elements or the API)."""
        ...

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
        """Take ``amount_minor`` off session. A decline is a ``Charge`` with status
        FAILED, not an exception; only the provider's own trouble raises."""
        ...

    def refund(self, intent_id: str, *, amount_minor: int, idempotency_key: str) -> str:
        """Refund a succeeded intent; returns the refund's id."""
        ...

    def event(self, payload: bytes, signature: str | None) -> ProviderEvent:
        """Verify a webhook delivery and read it; ``InvalidSignature`` if it does not verify."""
        ...
