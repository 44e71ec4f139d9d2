"""Demo billing data, seeded by `modelmint up` so a new user sees real numbers at once.

A demo price book, four plans (free, starter, payg, enterprise) and two customers:
``demo-subscription`` on starter and ``demo-prepaid`` on payg with promotional
credit. Idempotent: every step runs only when what it makes is missing.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.charges import FlatRate, GraduatedTiers, tiers_up_to
from modelmint.billing.errors import PlanNotFound
from modelmint.billing.metrics import Metric
from modelmint.billing.money import Money
from modelmint.billing.periods import Period
from modelmint.billing.plans import (
    EnterprisePlan,
    FreeTierPlan,
    Plan,
    PrepaidPlan,
    SubscriptionPlan,
)
from modelmint.billing.price_book import PriceBook
from modelmint.billing.serialization import Json
from modelmint.billing.store import BillingStore
from modelmint.billing.wallet import GrantKind
from modelmint.billing_admin.fields import org_fields
from modelmint.billing_admin.wallets import wallet_currencies
from modelmint.clock import utcnow
from modelmint.storage.tables import ApiKey, Organization

__all__ = ["DEMO_PREPAID_ORG", "DEMO_SUBSCRIPTION_ORG", "demo_plans", "seed_demo_billing"]

DEMO_CURRENCY = "USD"
DEMO_SUBSCRIPTION_ORG = "demo-subscription"
DEMO_PREPAID_ORG = "demo-prepaid"
DEMO_KEY_NAME = "demo"
DEMO_PROMOTIONAL_CREDIT = "5.00"
_PER_MILLION = 1_000_000


def _demo_price_book() -> PriceBook:
    def per_million(price: str) -> FlatRate:
        return FlatRate(Decimal(price), _PER_MILLION)

    return PriceBook(
        DEMO_CURRENCY,
        {
            ("smollm2-135m-instruct", Metric.INPUT_TOKENS): per_million("0.15"),
            ("smollm2-135m-instruct", Metric.OUTPUT_TOKENS): per_million("0.60"),
            ("all-minilm-l6-v2", Metric.EMBEDDING_TOKENS): per_million("0.02"),
            # Defaults for models added later (remote upstreams): a model nobody priced
            # must still be billable, never free by accident.
            ("*", Metric.INPUT_TOKENS): per_million("0.50"),
            ("*", Metric.OUTPUT_TOKENS): GraduatedTiers(
                tiers_up_to(
                    (10_000_000, Decimal("1.50")),
                    (None, Decimal("1.00")),
                    per_units=_PER_MILLION,
                )
            ),
            ("*", Metric.EMBEDDING_TOKENS): per_million("0.10"),
            # Requests and engine time are priced at zero rather than left out, so that
            # metering them never meets PriceNotFound; tokens carry the cost.
            ("*", Metric.REQUESTS): FlatRate(Decimal(0)),
            ("*", Metric.COMPUTE_SECONDS): FlatRate(Decimal(0)),
        },
    )


def demo_plans() -> list[Plan]:
    """Version 1 of the demo plans: free, starter, payg and enterprise, in USD."""
    book = _demo_price_book()
    return [
        FreeTierPlan(
            "free",
            1,
            DEMO_CURRENCY,
            {
                Metric.INPUT_TOKENS: 100_000,
                Metric.OUTPUT_TOKENS: 100_000,
                Metric.EMBEDDING_TOKENS: 100_000,
                Metric.REQUESTS: 1000,
                # Unlimited: the cap is on tokens and requests, engine time is reported.
                Metric.COMPUTE_SECONDS: None,
            },
        ),
        SubscriptionPlan(
            "starter",
            1,
            Money.parse("20.00", DEMO_CURRENCY),
            book,
            {Metric.INPUT_TOKENS: 1_000_000, Metric.OUTPUT_TOKENS: 1_000_000},
        ),
        PrepaidPlan("payg", 1, book),
        EnterprisePlan("enterprise", 1, Money.parse("2000.00", DEMO_CURRENCY)),
    ]


def _ensure_demo_key(session: Session, org: Organization) -> Json | None:
    active = session.scalar(
        select(ApiKey.id)
        .where(ApiKey.organization_id == org.id, ApiKey.revoked_at.is_(None))
        .limit(1)
    )
    if active is not None:
        return None
    row, secret = accounts.create_key(session, org, name=DEMO_KEY_NAME)
    return {**org_fields(org), "id": row.id, "prefix": row.prefix, "key": secret}


def _is_published(store: BillingStore, code: str) -> bool:
    try:
        store.plans.load_plan(code)
    except PlanNotFound:
        return False
    return True


def seed_demo_billing(session: Session) -> Json:
    """Demo plans and two demo organisations; safe to run at every start.

    Publishes a demo plan only if its code is absent, subscribes each demo
    organisation only if it never had a subscription, funds the prepaid one only when
    its wallet is first opened, and makes an API key only for an organisation with
    no active key. Returns what it created; ``keys`` hold secrets shown only now.
    """
    store = BillingStore(session)
    published: list[str] = []
    for plan in demo_plans():
        if not _is_published(store, plan.code):
            store.plans.publish_plan(plan)
            published.append(str(plan.ref))
    now = utcnow()
    # From the start of this month, so the first invoice shows the whole fixed fee
    # rather than a prorated sliver.
    start = Period.containing(now).start
    organizations: list[Json] = []
    keys: list[Json] = []
    for name, plan_code in ((DEMO_SUBSCRIPTION_ORG, "starter"), (DEMO_PREPAID_ORG, "payg")):
        org = accounts.ensure_org(session, name)
        if not store.subscriptions.timeline(org.id).subscriptions:
            store.subscriptions.subscribe(org.id, store.plans.load_plan(plan_code).ref, start)
        if plan_code == "payg" and not wallet_currencies(session, org.id):
            wallet = store.wallets.open_wallet(org.id, DEMO_CURRENCY)
            credit = Money.parse(DEMO_PROMOTIONAL_CREDIT, DEMO_CURRENCY)
            wallet.grant(credit, at=now, kind=GrantKind.PROMOTIONAL, reference="demo credit")
            store.wallets.save_wallet(wallet)
        organizations.append({**org_fields(org), "plan": plan_code})
        key = _ensure_demo_key(session, org)
        if key is not None:
            keys.append(key)
    return {"plans_published": published, "organizations": organizations, "keys": keys}
