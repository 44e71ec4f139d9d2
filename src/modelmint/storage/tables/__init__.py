"""The relational schema. Parts own the meaning of their tables; this package owns their shape.

One module per area (accounts, registry, usage, billing, credit, budgets, payments, portal,
analytics, feedback), all on the one ``Base`` of ``tables.base``. Importing this package
registers every table on ``Base.metadata``, which Alembic compares with the migrations, so
each table is re-exported here and importers name it from ``modelmint.storage.tables``.

Changing a table means a new Alembic revision in ``storage/migrations/versions``.
"""

from __future__ import annotations

from modelmint.storage.tables.accounts import ApiKey, Organization
from modelmint.storage.tables.analytics import (
    AnalyticsLatencyHourly,
    AnalyticsUsageDaily,
    AnalyticsUsageDailyTotal,
    AnalyticsUsageHourly,
)
from modelmint.storage.tables.base import NAMING, Base
from modelmint.storage.tables.billing import (
    BillingCoupon,
    BillingCouponRedemption,
    BillingInvoice,
    BillingInvoiceLine,
    BillingPlanVersion,
    BillingPriceBook,
    BillingSubscription,
    BillingTaxRate,
    BillingUsageTotal,
)
from modelmint.storage.tables.budgets import BillingAlert, BillingBudget, BillingSpend
from modelmint.storage.tables.credit import (
    BillingCreditGrant,
    BillingCreditLease,
    BillingLedgerEntry,
    BillingReservation,
    BillingWallet,
)
from modelmint.storage.tables.feedback import (
    Feedback,
    FeedbackDataset,
    RequestSample,
    SampleCapturePolicy,
)
from modelmint.storage.tables.payments import Payment, PaymentAccount, PaymentEvent
from modelmint.storage.tables.portal import PortalLink
from modelmint.storage.tables.registry import (
    Deployment,
    ModelAlias,
    ModelAliasMove,
    ModelVersion,
    RegisteredModel,
)
from modelmint.storage.tables.usage import UsageRecord, UsageRollup

__all__ = [
    "NAMING",
    "AnalyticsLatencyHourly",
    "AnalyticsUsageDaily",
    "AnalyticsUsageDailyTotal",
    "AnalyticsUsageHourly",
    "ApiKey",
    "Base",
    "BillingAlert",
    "BillingBudget",
    "BillingCoupon",
    "BillingCouponRedemption",
    "BillingCreditGrant",
    "BillingCreditLease",
    "BillingInvoice",
    "BillingInvoiceLine",
    "BillingLedgerEntry",
    "BillingPlanVersion",
    "BillingPriceBook",
    "BillingReservation",
    "BillingSpend",
    "BillingSubscription",
    "BillingTaxRate",
    "BillingUsageTotal",
    "BillingWallet",
    "Deployment",
    "Feedback",
    "FeedbackDataset",
    "ModelAlias",
    "ModelAliasMove",
    "ModelVersion",
    "Organization",
    "Payment",
    "PaymentAccount",
    "PaymentEvent",
    "PortalLink",
    "RegisteredModel",
    "RequestSample",
    "SampleCapturePolicy",
    "UsageRecord",
    "UsageRollup",
]
