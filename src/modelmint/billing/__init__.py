"""Billing: the pure domain that turns metered usage into money owed and paid.

Plain Python and the standard library only (no web framework, no ORM): the
gateway, the CLI and the billing store (``billing.store``) are adapters around it. Money is exact
``Decimal``, never float; amounts keep full precision and are rounded once, per
invoice line, half-even to the currency's minor units (see ``money``).

Modules, one concept each:

    exact          the exact Decimal context; bounded input conversion
    money          Money, minor units, the rounding rule
    metrics        billable metrics (input/output/embedding tokens, requests, compute seconds)
    charges        charge models: flat rate, graduated and volume tiers, packages
    price_book     prices per (model | model group | *, metric) in one currency
    plans          free tier, subscription, prepaid, enterprise; versions and a catalog
    periods        calendar-month billing periods in UTC
    proration      share of a fixed fee for part of a period, cumulative rounding
    subscriptions  an organisation's plan timeline and its fixed-fee charges
    rating         the exact charge of one request; free-tier admission
    wallet         prepaid credit grants, reservations and the append-only ledger
    coupons        percent / amount off, once / repeating / forever
    tax            tax rate on the discounted subtotal
    invoices       invoice lines, totals, states, JSON and CSV export
    invoicing      building a draft invoice from fees, usage and request charges
    invoice_pdf    the invoice as a PDF (reportlab); not imported here, so the
                   domain loads without it
    budgets        monthly spend caps (hard or soft) and the threshold rule of alerts
    errors         billing's branch of the ModelMintError tree
"""

from modelmint.billing.budgets import Budget
from modelmint.billing.charges import (
    ChargeModel,
    FlatRate,
    GraduatedTiers,
    PackagePrice,
    Tier,
    VolumeTiers,
    tiers_up_to,
)
from modelmint.billing.coupons import (
    AmountOff,
    Coupon,
    CouponDuration,
    DurationKind,
    PercentOff,
    Redemption,
)
from modelmint.billing.errors import (
    BudgetExceeded,
    ChargeMismatch,
    CurrencyMismatch,
    InsufficientCredit,
    InvalidBudget,
    InvalidCoupon,
    InvalidInvoiceTransition,
    InvalidMoney,
    InvalidPeriod,
    InvalidPlan,
    InvalidPriceBook,
    InvalidQuantity,
    InvalidTaxRate,
    InvalidWalletOperation,
    InvoiceImmutable,
    PlanNotFound,
    PlanVersionConflict,
    PriceNotFound,
    SubscriptionConflict,
    UnknownReservation,
    UsageCapExceeded,
)
from modelmint.billing.exact import Quantity
from modelmint.billing.invoices import Invoice, InvoiceLine, InvoiceStatus, LineKind
from modelmint.billing.invoicing import draft_invoice
from modelmint.billing.metrics import Metric
from modelmint.billing.money import ROUNDING, Money, minor_units
from modelmint.billing.periods import Period
from modelmint.billing.plans import (
    EnterprisePlan,
    FreeTierPlan,
    Plan,
    PlanCatalog,
    PlanKind,
    PlanRef,
    PrepaidPlan,
    SubscriptionPlan,
)
from modelmint.billing.price_book import PriceBook, PriceMatch
from modelmint.billing.proration import prorate
from modelmint.billing.rating import (
    LinearRates,
    PeriodUsage,
    RatedUsage,
    UsageKey,
    UsageTotal,
    admit,
    rate,
)
from modelmint.billing.subscriptions import (
    FeeCharge,
    FeeKind,
    Subscription,
    SubscriptionTimeline,
)
from modelmint.billing.tax import TaxRate
from modelmint.billing.wallet import (
    CreditGrant,
    EntryKind,
    GrantKind,
    LedgerEntry,
    Reservation,
    Wallet,
)

__all__ = [
    "ROUNDING",
    "AmountOff",
    "Budget",
    "BudgetExceeded",
    "ChargeMismatch",
    "ChargeModel",
    "Coupon",
    "CouponDuration",
    "CreditGrant",
    "CurrencyMismatch",
    "DurationKind",
    "EnterprisePlan",
    "EntryKind",
    "FeeCharge",
    "FeeKind",
    "FlatRate",
    "FreeTierPlan",
    "GraduatedTiers",
    "GrantKind",
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
    "Invoice",
    "InvoiceImmutable",
    "InvoiceLine",
    "InvoiceStatus",
    "LedgerEntry",
    "LineKind",
    "LinearRates",
    "Metric",
    "Money",
    "PackagePrice",
    "PercentOff",
    "Period",
    "PeriodUsage",
    "Plan",
    "PlanCatalog",
    "PlanKind",
    "PlanNotFound",
    "PlanRef",
    "PlanVersionConflict",
    "PrepaidPlan",
    "PriceBook",
    "PriceMatch",
    "PriceNotFound",
    "Quantity",
    "RatedUsage",
    "Redemption",
    "Reservation",
    "Subscription",
    "SubscriptionConflict",
    "SubscriptionPlan",
    "SubscriptionTimeline",
    "TaxRate",
    "Tier",
    "UnknownReservation",
    "UsageCapExceeded",
    "UsageKey",
    "UsageTotal",
    "VolumeTiers",
    "Wallet",
    "admit",
    "draft_invoice",
    "minor_units",
    "prorate",
    "rate",
    "tiers_up_to",
]
