"""The relational schema. Parts own the meaning of their tables; this module owns their shape.

Changing a table means a new Alembic revision in ``storage/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.types import ExactDecimal, UTCDateTime

__all__ = [
    "ApiKey",
    "Base",
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
    "BillingSubscription",
    "BillingTaxRate",
    "BillingWallet",
    "Deployment",
    "Feedback",
    "FeedbackDataset",
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

# Stable constraint names let Alembic alter them on both SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Limits shared by all of the organisation's keys; NULL means unlimited.
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Where billing alerts (budgets, credit, allowances) are POSTed; NULL: only recorded.
    alert_webhook_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set by `modelmint orgs delete`: the customer's data is erased, its financial
    # records (usage, charges, invoices) are kept for the books; see accounts.erasure.
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApiKey(Base):
    """A customer's API key. Only a SHA-256 hash of the secret is kept, never the secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # The first characters of the secret, safe to show so people can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(24))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Public model names this key may call; NULL means every model.
    models: Mapped[list[str] | None] = mapped_column(nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RegisteredModel(Base):
    """A named model, e.g. ``smollm2-135m-instruct``; its versions hold the artifacts."""

    __tablename__ = "registered_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # What the model does: chat, embedding, classification, recommendation.
    task: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # gguf, sentence-transformers, remote, ...: tells the serving layer how to load it.
    format: Mapped[str] = mapped_column(String(40))
    # A file path, a package resource or an upstream base URL.
    artifact_uri: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Trained versions: the recipe, a fingerprint of the data, where it came from
    # (data source, dataset name@version, parent version) and the generated model card.
    recipe: Mapped[str | None] = mapped_column(String(60), nullable=True)
    data_hash: Mapped[str | None] = mapped_column(String(80), nullable=True)
    parent_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    card: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """A movable name for one version of a model (``production``, ``staging``)."""

    __tablename__ = "model_aliases"

    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(60), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAliasMove(Base):
    """Append-only history of alias moves: who pointed ``production`` where, and when."""

    __tablename__ = "model_alias_moves"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(60))
    from_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    to_version_id: Mapped[str] = mapped_column(String(40))
    note: Mapped[str] = mapped_column(Text, default="")
    moved_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """A model version made callable under a public name, on one backend.

    Several active deployments may share a public name; ``weight`` splits the traffic.
    """

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    public_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    # llama_cpp, sentence_transformer, openai_remote
    backend: Mapped[str] = mapped_column(String(40))
    # Backend settings (upstream URL, env var of its key, timeouts); never a secret itself.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    weight: Mapped[int] = mapped_column(Integer, default=100)
    # Public name to try when this deployment's backend fails before answering.
    fallback: Mapped[str | None] = mapped_column(String(200), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # What serving costs: a local engine's hardware per hour (shared among requests by
    # measured engine time), or a remote upstream's prices per million tokens.
    cost_per_hour: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    cost_per_1m_input: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    cost_per_1m_output: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped on every change, so gateways notice a new weight or cost within a second.
    updated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The deployments this one's rollout retired: active again if it cannot start.
    replaces: Mapped[list[str]] = mapped_column(default=list)
    # When a gateway first had its backend running; NULL: not started yet.
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When a gateway failed to start it, and why: such a deployment is not tried again.
    failed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class UsageRecord(Base):
    """One request that reached a model: who, which model, how many tokens, how it ended."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_org_created", "organization_id", "created_at"),)

    # The request id: unique, so a retried write can never count a request twice.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    organization_id: Mapped[str] = mapped_column(String(40))
    api_key_id: Mapped[str] = mapped_column(String(40), index=True)
    model: Mapped[str] = mapped_column(String(200))
    deployment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(40))
    status_code: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    # True when the upstream reported no usage and we counted with our own tokenizer.
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Engine busy time charged to the request (a measurement, not money).
    engine_ms: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # What the request cost its organisation, exact and unrounded, under which plan
    # version: set by the metering writer in the transaction that stores the row. NULL
    # when the organisation has no subscription (nothing is billed).
    plan_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    plan_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    charge: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    # What serving this request cost us (deployment cost rates x measured use), exact.
    cost: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)


class UsageRollup(Base):
    """Hourly sums of usage, kept by the metering writer in the same transaction as the
    usage rows, so billing and analytics read small tables however large raw usage grows."""

    __tablename__ = "usage_rollups_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    # "" when unknown: primary key columns cannot be NULL.
    model_version_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # requests, errors, input_tokens, output_tokens, latency_ms, engine_us
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)


# -- billing ------------------------------------------------------------------------------
# The rows behind ``modelmint.billing`` (mapped by ``billing/repository.py``). Money and
# other exact quantities use ``ExactDecimal``; documents (price books, plan terms,
# coupons) are JSON whose decimals are strings (``billing/serialization.py``).


class BillingPriceBook(Base):
    """An immutable price book; identical books share one row (``digest`` of the document)."""

    __tablename__ = "billing_price_books"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    document: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingPlanVersion(Base):
    """One published plan version; never updated (a change is the next version's row)."""

    __tablename__ = "billing_plan_versions"
    __table_args__ = (UniqueConstraint("code", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    code: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    currency: Mapped[str] = mapped_column(String(3))
    price_book_id: Mapped[str | None] = mapped_column(
        ForeignKey("billing_price_books.id"), nullable=True, index=True
    )
    # The plan's own terms (fee, allowances) without the price book, which is linked.
    terms: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingSubscription(Base):
    """An organisation on one plan version during ``[starts_at, ends_at)``."""

    __tablename__ = "billing_subscriptions"
    __table_args__ = (UniqueConstraint("organization_id", "starts_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    plan_version_id: Mapped[str] = mapped_column(ForeignKey("billing_plan_versions.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column()
    ends_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingWallet(Base):
    """An organisation's prepaid wallet in one currency: the row writers lock.

    ``balance`` is the running sum of the wallet's ledger and ``last_sequence`` its
    newest entry, both updated in the transaction that appends entries: a writer
    takes ``SELECT ... FOR UPDATE`` on this row (PostgreSQL) or the write lock
    (SQLite), and every save is a compare-and-set on ``last_sequence``.
    """

    __tablename__ = "billing_wallets"
    __table_args__ = (UniqueConstraint("organization_id", "currency"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    balance: Mapped[Decimal] = mapped_column(ExactDecimal())
    last_sequence: Mapped[int] = mapped_column(Integer, default=0)
    # Reservations and grants ever made, so ids (res_N, grant_N) stay unique after a reload.
    reservation_count: Mapped[int] = mapped_column(Integer, default=0)
    grant_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Running sums of all credit granted and consumed, for "N% of credit used" alerts.
    granted_total: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    consumed_total: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    # Credit held for requests in flight (the sum of the open reservations made by the
    # gateway), and the soonest expiry of a grant with credit left: admission reserves
    # with one conditional UPDATE while balance - held covers the request and no
    # credit has expired unrecorded.
    held: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    # Credit gateway processes have set aside for themselves (open leases, see
    # ``BillingCreditLease``): balance - held - leased never goes below zero.
    leased: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    expires_next: Mapped[datetime | None] = mapped_column(nullable=True)
    # When the newest ledger entry was recorded (later entries may not be dated earlier).
    last_entry_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingCreditGrant(Base):
    """One grant of credit. Its terms never change; ``remaining`` is the running sum of
    its ledger entries, kept beside the wallet's ``balance`` so that a request loads
    only the grants with credit left instead of replaying the ledger."""

    __tablename__ = "billing_credit_grants"

    wallet_id: Mapped[str] = mapped_column(ForeignKey("billing_wallets.id"), primary_key=True)
    grant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    priority: Mapped[int] = mapped_column(Integer)
    granted_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    remaining: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")


class BillingLedgerEntry(Base):
    """One signed change to one grant's usable credit. Append-only: never updated."""

    __tablename__ = "billing_ledger_entries"
    __table_args__ = (
        ForeignKeyConstraint(
            ["wallet_id", "grant_id"],
            ["billing_credit_grants.wallet_id", "billing_credit_grants.grant_id"],
            name="fk_billing_ledger_entries_grant",
        ),
        Index("ix_billing_ledger_entries_wallet_reference", "wallet_id", "reference"),
    )

    wallet_id: Mapped[str] = mapped_column(ForeignKey("billing_wallets.id"), primary_key=True)
    # 1, 2, 3 ... per wallet: the primary key refuses two writers appending the same one.
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column()
    kind: Mapped[str] = mapped_column(String(20))
    grant_id: Mapped[str] = mapped_column(String(40))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)


class BillingReservation(Base):
    """Funds held for one request; its holds are the ledger's reservation entries."""

    __tablename__ = "billing_reservations"

    wallet_id: Mapped[str] = mapped_column(ForeignKey("billing_wallets.id"), primary_key=True)
    reservation_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    reference: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column()
    # Set once, when settled or released; NULL rows are what a sweeper releases.
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)


class BillingUsageTotal(Base):
    """Period-to-date usage of one organisation per (plan version, model, metric).

    The running totals request-time rating prices each request against (tiers apply
    to the running quantity), kept by the metering writer in the transaction that
    stores the usage rows. ``amount`` is the exact sum of the charges of those
    requests, ``charges`` how many there were: the invoice's usage line for the key.
    """

    __tablename__ = "billing_usage_totals"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    plan_code: Mapped[str] = mapped_column(String(100), primary_key=True)
    plan_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal())
    included: Mapped[Decimal] = mapped_column(ExactDecimal())
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    charges: Mapped[int] = mapped_column(Integer, default=0)


class BillingBudget(Base):
    """A monthly spend cap of an organisation (``api_key_id`` "") or of one of its keys.

    Hard: a request whose worst case would pass the limit is refused (402). Soft:
    requests go on and an alert is raised. ``thresholds`` (percent of the limit)
    raise an alert each, once per month.
    """

    __tablename__ = "billing_budgets"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    currency: Mapped[str] = mapped_column(String(3))
    hard: Mapped[bool] = mapped_column(Boolean)
    thresholds: Mapped[list[Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingSpend(Base):
    """Month-to-date charges of an organisation (``api_key_id`` "") or one key.

    ``amount`` is the exact sum of settled request charges, kept by the metering
    writer; ``held`` is the worst case admission reserved for requests in flight
    against a hard budget (the row lock serialises admissions across processes);
    ``leased`` is what gateway processes set aside for themselves (open leases), so
    amount + held + leased never passes a hard limit.
    """

    __tablename__ = "billing_spend"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    held: Mapped[Decimal] = mapped_column(ExactDecimal())
    leased: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")


class BillingCreditLease(Base):
    """A block of credit (a wallet's) or budget room (a month's spend) that one gateway
    process set aside for itself, to admit requests against in memory (escrow).

    ``amount`` is what the lease still sets aside, and is part of its pool's
    ``leased`` sum: it grows when the holder tops the lease up, and shrinks when the
    holder gives some back or consumption through it is posted to the pool; what is
    left is handed back when the lease closes (gracefully, or by a sweep once
    ``expires_at`` has passed without a renewal).

    ``pending`` is what requests admitted against a wallet lease consumed and the
    wallet's ledger has not recorded yet: the metering writer adds each charge here, in
    the transaction that stores the request's usage row, and the holder's next renewal
    (or the close, or the sweep) posts it to the ledger as one consumption. It stays
    part of ``amount`` until then, so the wallet's free credit is right all along.
    Budget leases post each charge to the month's spend at once: their pending is 0.
    """

    __tablename__ = "billing_credit_leases"
    __table_args__ = (Index("ix_billing_credit_leases_open", "closed_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))  # "wallet" or "budget"
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    currency: Mapped[str] = mapped_column(String(3))
    # wallet leases: the wallet; budget leases: the scope ("" or a key id) and month.
    wallet_id: Mapped[str | None] = mapped_column(ForeignKey("billing_wallets.id"), nullable=True)
    api_key_id: Mapped[str] = mapped_column(String(40), default="")
    period_start: Mapped[datetime | None] = mapped_column(nullable=True)
    holder: Mapped[str] = mapped_column(String(120))  # host:pid:nonce of the gateway process
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    pending: Mapped[Decimal] = mapped_column(ExactDecimal(), server_default="0")
    granted: Mapped[Decimal] = mapped_column(ExactDecimal())  # all ever set aside
    consumed: Mapped[Decimal] = mapped_column(ExactDecimal())  # charges paid through it
    last_consumed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column(nullable=True)


class BillingAlert(Base):
    """One alert (a budget, credit or allowance threshold crossed), raised once per period.

    The id is derived from what the alert is about, so concurrent writers raising
    the same alert store it once. Delivery to the organisation's webhook is
    at-least-once: receivers de-duplicate on the id.
    """

    __tablename__ = "billing_alerts"
    __table_args__ = (Index("ix_billing_alerts_pending", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    api_key_id: Mapped[str] = mapped_column(String(40))  # "" for the whole organisation
    kind: Mapped[str] = mapped_column(String(20))  # budget, credit, allowance
    subject: Mapped[str] = mapped_column(String(40))  # the metric of an allowance, else ""
    period_start: Mapped[datetime] = mapped_column()
    threshold: Mapped[int] = mapped_column(Integer)  # percent
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # pending -> delivered | failed (retries exhausted) | unrouted (no webhook configured)
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)


class BillingCoupon(Base):
    __tablename__ = "billing_coupons"

    code: Mapped[str] = mapped_column(String(100), primary_key=True)
    definition: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingCouponRedemption(Base):
    __tablename__ = "billing_coupon_redemptions"
    __table_args__ = (UniqueConstraint("organization_id", "coupon_code"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    coupon_code: Mapped[str] = mapped_column(ForeignKey("billing_coupons.code"), index=True)
    first_period_start: Mapped[datetime] = mapped_column()
    first_period_end: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingTaxRate(Base):
    """The tax rate now in force for an organisation (invoices copy it when drafted)."""

    __tablename__ = "billing_tax_rates"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    percent: Mapped[Decimal] = mapped_column(ExactDecimal())
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BillingInvoice(Base):
    """One invoice: status, period and totals; its charge lines are child rows."""

    __tablename__ = "billing_invoices"
    __table_args__ = (Index("ix_billing_invoices_org_period", "organization_id", "period_start"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    period_start: Mapped[datetime] = mapped_column()
    period_end: Mapped[datetime] = mapped_column()
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20), index=True)
    # [[code, version], ...] of the plan versions billed.
    plans: Mapped[list[Any]] = mapped_column(JSON)
    # The coupon applied, as its full document: a coupon's terms are part of the bill.
    coupon: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    tax_name: Mapped[str] = mapped_column(String(100))
    tax_percent: Mapped[Decimal] = mapped_column(ExactDecimal())
    subtotal: Mapped[Decimal] = mapped_column(ExactDecimal())
    discount: Mapped[Decimal] = mapped_column(ExactDecimal())
    tax: Mapped[Decimal] = mapped_column(ExactDecimal())
    total: Mapped[Decimal] = mapped_column(ExactDecimal())
    usage_exact_total: Mapped[Decimal] = mapped_column(ExactDecimal())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finalized_at: Mapped[datetime | None] = mapped_column(nullable=True)
    paid_at: Mapped[datetime | None] = mapped_column(nullable=True)
    voided_at: Mapped[datetime | None] = mapped_column(nullable=True)


class BillingInvoiceLine(Base):
    """One charge line (discount and tax lines are derived from the invoice row)."""

    __tablename__ = "billing_invoice_lines"

    invoice_id: Mapped[str] = mapped_column(
        ForeignKey("billing_invoices.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    description: Mapped[str] = mapped_column(Text)
    amount: Mapped[Decimal] = mapped_column(ExactDecimal())
    exact_amount: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    plan_code: Mapped[str | None] = mapped_column(String(100), nullable=True)
    plan_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    metric: Mapped[str | None] = mapped_column(String(40), nullable=True)
    quantity: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    included: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    overage: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    charges: Mapped[int | None] = mapped_column(Integer, nullable=True)
    span_start: Mapped[datetime | None] = mapped_column(nullable=True)
    span_end: Mapped[datetime | None] = mapped_column(nullable=True)


# -- payments -----------------------------------------------------------------------------
# Money collected through a payment provider (``modelmint.payments``): who each
# organisation is there, every attempt to take money, and the provider's events seen.


class PaymentAccount(Base):
    """An organisation at the payment provider: its customer, saved method, auto top-up
    and dunning state. Secrets never live here: only the provider's ids."""

    __tablename__ = "payment_accounts"

    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    provider: Mapped[str] = mapped_column(String(20))
    customer_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    payment_method_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # What a person recognises the method by, e.g. "visa 4242".
    method_label: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Auto top-up: when available credit in ``auto_top_up_currency`` falls below
    # ``auto_top_up_below``, charge the saved method ``auto_top_up_amount``.
    auto_top_up_below: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    auto_top_up_amount: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    auto_top_up_currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    # Dunning: since when the organisation's keys answer 402 payment_required.
    blocked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Payment(Base):
    """One sum to collect (an invoice's total or a top-up) and its attempts so far.

    ``amount_minor`` is in the currency's minor units, as providers take it. A payment
    moves ``pending -> succeeded | failed | requires_action``; a failed invoice payment
    is attempted again at ``next_attempt_at``; ``succeeded`` is final except for a refund.
    """

    __tablename__ = "payments"
    __table_args__ = (Index("ix_payments_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    invoice_id: Mapped[str | None] = mapped_column(
        ForeignKey("billing_invoices.id"), nullable=True, index=True
    )
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    intent_id: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    failure: Mapped[str | None] = mapped_column(String(500), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    first_failed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    refund_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded_at: Mapped[datetime | None] = mapped_column(nullable=True)


class PaymentEvent(Base):
    """A provider event already applied: its id makes every delivery after the first a no-op."""

    __tablename__ = "payment_events"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    payment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    outcome: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class PortalLink(Base):
    """A sign-in link to the customer portal the operator handed out: single use, expiring.

    Only a digest of the link's secret is kept (``portal.links``); signing in sets
    ``used_at`` with one conditional UPDATE, so a link works once.
    """

    __tablename__ = "portal_links"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    secret_digest: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- analytics ----------------------------------------------------------------------------
# Rollups the metering writer keeps in the transaction that stores the usage rows and
# their charges (``metering/rollups.py``), read by ``modelmint.analytics``. Money sums are
# exact: NUMERIC on PostgreSQL; on SQLite, text added by the writer in Python.


class _AnalyticsMeasures:
    """What a slice of usage served, earned and cost."""

    # Answered (2xx) requests and the others.
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    # Prompt tokens of text requests, their output tokens, and the input of embeddings.
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    embedding_tokens: Mapped[int] = mapped_column(BigInteger)
    # Engine busy time in whole microseconds and the sum of latencies, exact integers.
    engine_us: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(BigInteger)
    # Sum of the request charges (in ``currency``) and of the serving cost, exact.
    revenue: Mapped[Decimal] = mapped_column(ExactDecimal())
    cost: Mapped[Decimal] = mapped_column(ExactDecimal())


class _AnalyticsSums(_AnalyticsMeasures):
    """Measures keyed by who used what; "" for a key part that is unknown (primary key
    columns cannot be NULL): no version, no deployment, or unbilled."""

    organization_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    plan_code: Mapped[str] = mapped_column(String(100), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)


class AnalyticsUsageHourly(_AnalyticsSums, Base):
    """Usage, revenue and cost per hour x organisation x model x version x deployment x
    plan x currency."""

    __tablename__ = "analytics_usage_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)


class AnalyticsUsageDaily(_AnalyticsSums, Base):
    """The same sums per UTC day: month-long reports read ~24 times fewer rows."""

    __tablename__ = "analytics_usage_daily"

    day: Mapped[datetime] = mapped_column(primary_key=True)


class AnalyticsLatencyHourly(Base):
    """How many answered requests of a model fell in each latency bucket, per hour.

    ``le_ms`` is the bucket's upper bound (``metering.rollups.LATENCY_BUCKETS_MS``), so
    percentiles come from these counts rather than from raw rows.
    """

    __tablename__ = "analytics_latency_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    le_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)


class AnalyticsUsageDailyTotal(_AnalyticsMeasures, Base):
    """The same sums per UTC day and currency only: what the overview reads (a month is
    31 rows however many customers and models there are)."""

    __tablename__ = "analytics_usage_daily_totals"

    day: Mapped[datetime] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)


# -- feedback loop ------------------------------------------------------------------------
# Owned by ``modelmint.feedback``: customers' ratings of served requests, the opt-in
# captured samples (redacted before they are written), and the datasets built from both.


class Feedback(Base):
    """A customer's rating of one served request; repeated feedback updates the row."""

    __tablename__ = "feedback"

    # The request id (``usage_records.id``) the rating is about.
    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200), index=True)
    model_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    # thumbs, stars (1-5), numeric or categorical; ``score`` is the number compared across
    # versions (thumbs: 1 up, 0 down), ``label`` the category of a categorical score.
    score_name: Mapped[str] = mapped_column(String(60), default="score")
    score_kind: Mapped[str] = mapped_column(String(20))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    corrected_output: Mapped[str | None] = mapped_column(Text, nullable=True)
    corrected_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The rater's own words (bounded by ``feedback.MAX_COMMENT_CHARS``).
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SampleCapturePolicy(Base):
    """Who opted in to sample capture: an organisation or one of its keys."""

    __tablename__ = "sample_capture_policies"

    # "organization" or "key", and that subject's id.
    scope: Mapped[str] = mapped_column(String(20), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    retention_days: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RequestSample(Base):
    """The request and response text of one served request, PII already redacted."""

    __tablename__ = "request_samples"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200), index=True)
    model_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(40))
    request_text: Mapped[str] = mapped_column(Text)
    response_text: Mapped[str] = mapped_column(Text)
    # PII placeholders written, per kind, so reviewers know what was removed.
    redactions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the purge job deletes it (created_at + the policy's retention).
    expires_at: Mapped[datetime] = mapped_column(index=True)


class FeedbackDataset(Base):
    """One version of a dataset built from feedback, and the requests it came from."""

    __tablename__ = "feedback_datasets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source_model: Mapped[str] = mapped_column(String(200))
    # csv (tabular classifiers) or jsonl (chat and text).
    format: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    data_hash: Mapped[str] = mapped_column(String(80))
    rows: Mapped[int] = mapped_column(Integer)
    request_ids: Mapped[list[str]] = mapped_column(default=list)
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
