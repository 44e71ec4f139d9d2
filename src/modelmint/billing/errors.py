"""The errors of the billing domain, each a branch of the one ModelMint error tree.

Every billing error subclasses the ``modelmint.errors`` class whose HTTP status and
CLI exit code fit it, so the gateway and the CLI map them without knowing billing:

    ModelMintError
    ├── ChargeMismatch                 500  per-request charges disagree with the plan's price
    ├── InvalidRequest                 400
    │   ├── InvalidMoney                    not a finite decimal amount, bad currency code
    │   ├── CurrencyMismatch                arithmetic or comparison across two currencies
    │   ├── InvalidQuantity                 negative, non-finite or fractional where whole units
    │   ├── InvalidPriceBook                bad tiers, negative price, inexact "per N units"
    │   ├── InvalidPlan                     a plan whose terms contradict themselves
    │   ├── InvalidPeriod                   naive datetimes, empty or inverted spans
    │   ├── InvalidCoupon                   percent outside (0, 100], non-positive amount
    │   ├── InvalidTaxRate                  percent outside [0, 100]
    │   ├── InvalidBudget                   non-positive limit, thresholds outside 1..100%
    │   └── InvalidWalletOperation          non-positive grant, expiry before grant
    ├── InsufficientQuota              402
    │   ├── UsageCapExceeded                the free tier's hard cap refuses the request
    │   ├── BudgetExceeded                  a hard monthly budget cannot take the request
    │   └── InsufficientCredit              the wallet cannot cover a reservation or charge
    ├── NotFound                       404
    │   ├── PriceNotFound                   no price for (model, metric), not even a default
    │   ├── PlanNotFound                    no such plan code or version
    │   └── UnknownReservation              settle/release of a reservation that is not open
    └── Conflict                       409
        ├── PlanVersionConflict             publishing a version that exists or skips one
        ├── SubscriptionConflict            overlapping subscriptions, change of a closed one
        ├── InvalidInvoiceTransition        finalize twice, pay a void invoice, void a paid one
        └── InvoiceImmutable                editing an invoice that is no longer a draft

The 402 errors keep the parent's ``insufficient_quota`` code on purpose: OpenAI SDK
clients recognise that code, and the message says which limit was hit.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from modelmint.errors import Conflict, InsufficientQuota, InvalidRequest, ModelMintError, NotFound

__all__ = [
    "BudgetExceeded",
    "ChargeMismatch",
    "CurrencyMismatch",
    "InsufficientCredit",
    "InvalidBudget",
    "InvalidCoupon",
    "InvalidInvoiceTransition",
    "InvalidMoney",
    "InvalidPeriod",
    "InvalidPlan",
    "InvalidPriceBook",
    "InvalidQuantity",
    "InvalidTaxRate",
    "InvalidWalletOperation",
    "InvoiceImmutable",
    "PlanNotFound",
    "PlanVersionConflict",
    "PriceNotFound",
    "SubscriptionConflict",
    "UnknownReservation",
    "UsageCapExceeded",
]


class ChargeMismatch(ModelMintError):
    """Our own records disagree: a bug or a lost write, never the customer's fault."""

    code = "charge_mismatch"


class InvalidMoney(InvalidRequest):
    code = "invalid_money"


class CurrencyMismatch(InvalidRequest):
    code = "currency_mismatch"


class InvalidQuantity(InvalidRequest):
    code = "invalid_quantity"


class InvalidPriceBook(InvalidRequest):
    code = "invalid_price_book"


class InvalidPlan(InvalidRequest):
    code = "invalid_plan"


class InvalidPeriod(InvalidRequest):
    code = "invalid_period"


class InvalidCoupon(InvalidRequest):
    code = "invalid_coupon"


class InvalidTaxRate(InvalidRequest):
    code = "invalid_tax_rate"


class InvalidBudget(InvalidRequest):
    code = "invalid_budget"


class InvalidWalletOperation(InvalidRequest):
    code = "invalid_wallet_operation"


class BudgetExceeded(InsufficientQuota):
    """A hard monthly budget cannot take the worst case of one more request.

    What it names (the budget's ``scope``, "" for the organisation, else a key id; its
    limit; what the month was charged; the month's start) lets the refusal raise the
    budget's exhausted alert."""

    def __init__(
        self,
        message: str,
        *,
        scope: str = "",
        limit: Decimal | None = None,
        currency: str | None = None,
        charged: Decimal | None = None,
        period_start: datetime | None = None,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.limit = limit
        self.currency = currency
        self.charged = charged
        self.period_start = period_start


class UsageCapExceeded(InsufficientQuota):
    """The free tier's allowance for ``metric`` cannot take ``requested`` more units."""

    def __init__(
        self, message: str, *, metric: str, limit: Decimal, used: Decimal, requested: Decimal
    ) -> None:
        super().__init__(message, param=metric)
        self.metric = metric
        self.limit = limit
        self.used = used
        self.requested = requested


class InsufficientCredit(InsufficientQuota):
    """The wallet's usable balance is below what the operation needs; nothing changed."""

    def __init__(
        self, message: str, *, needed: Decimal, available: Decimal, currency: str | None = None
    ) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available
        self.currency = currency  # of the wallet, when known: its exhausted alert names it


class PriceNotFound(NotFound):
    code = "price_not_found"


class PlanNotFound(NotFound):
    code = "plan_not_found"


class UnknownReservation(NotFound):
    code = "reservation_not_found"


class PlanVersionConflict(Conflict):
    code = "plan_version_conflict"


class SubscriptionConflict(Conflict):
    code = "subscription_conflict"


class InvalidInvoiceTransition(Conflict):
    code = "invalid_invoice_transition"


class InvoiceImmutable(Conflict):
    code = "invoice_immutable"
