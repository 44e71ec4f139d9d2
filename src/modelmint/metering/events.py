"""The usage event: what one request consumed, as the gateway saw it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = ["UsageEvent"]


@dataclass(slots=True)
class UsageEvent:
    id: str  # the request id; unique, so a retried write can never count twice
    created_at: datetime
    organization_id: str
    api_key_id: str
    model: str
    endpoint: str
    status_code: int
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: int = 0
    deployment_id: str | None = None
    model_version_id: str | None = None
    streamed: bool = False
    usage_estimated: bool = False
    finish_reason: str | None = None
    engine_ms: float = 0.0
    # Billing, decided at admission: the plan version the request is rated under, its
    # currency, and the wallet reservation the writer settles (prepaid plans).
    plan_code: str | None = None
    plan_version: int | None = None
    currency: str | None = None
    reservation: str | None = None
    # Worst case held per request against hard budgets at admission, the month it was
    # held in and the scopes ("" for the organisation, else the key id) it was held on.
    spend_hold: Decimal = Decimal(0)
    spend_period: datetime | None = None
    spend_scopes: tuple[str, ...] = ()
    # Credit leases of this process the request was admitted against (its wallet's, its
    # hard budgets'), and the worst case it took from each: the writer charges it
    # through them.
    wallet_lease: str | None = None
    spend_leases: tuple[str, ...] = ()
    lease_worst: Decimal = Decimal(0)
    # What serving it cost: the deployment's rates applied to the measured use.
    cost: Decimal | None = None
    # Refused before any model work (a 401, 402, 403 or 429 of a known key): stored so
    # that the organisation and the operator can see it, but neither usage nor an error
    # of the model, so the rollups leave it out.
    refused: bool = False

    @property
    def leases(self) -> tuple[str, ...]:
        """Every lease the request was admitted against."""
        if self.wallet_lease is None:
            return self.spend_leases
        return (self.wallet_lease, *self.spend_leases)

    def row(self) -> dict[str, Any]:
        return asdict(self)
