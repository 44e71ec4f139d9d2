"""Plan versions and the price books they use, as stored: inserted once, never changed.

A price book is stored once per content (its digest), however many plan versions
name it; a plan is published as version 1 of a new code or exactly the next
version of an existing one (``PlanVersionConflict`` otherwise).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from modelmint.billing.errors import PlanNotFound, PlanVersionConflict
from modelmint.billing.plans import Plan, PlanCatalog, PlanRef
from modelmint.billing.price_book import PriceBook
from modelmint.billing.serialization import (
    Json,
    plan_from_dict,
    plan_to_dict,
    price_book_from_dict,
    price_book_to_dict,
)
from modelmint.billing.store.base import StorePart
from modelmint.errors import NotFound
from modelmint.ids import new_id
from modelmint.storage.tables import BillingPlanVersion, BillingPriceBook

__all__ = ["PlanStore"]


def _digest(document: Json) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class PlanStore(StorePart):
    """Price books and plan versions."""

    # -- price books ------------------------------------------------------------------------

    def save_price_book(self, book: PriceBook) -> str:
        """Store ``book`` (immutable) and return its id; an identical book is stored once."""
        document = price_book_to_dict(book)
        digest = _digest(document)
        existing = self._session.scalar(
            select(BillingPriceBook.id).where(BillingPriceBook.digest == digest)
        )
        if existing is not None:
            return existing
        row = BillingPriceBook(
            id=new_id("pb"), digest=digest, currency=book.currency, document=document
        )
        self._session.add(row)
        self._flush("price book stored concurrently; retry")
        return row.id

    def load_price_book(self, price_book_id: str) -> PriceBook:
        row = self._session.get(BillingPriceBook, price_book_id)
        if row is None:
            raise NotFound(f"no price book {price_book_id!r}", param="price_book")
        return price_book_from_dict(row.document)

    # -- plan versions ----------------------------------------------------------------------

    def publish_plan(self, plan: Plan) -> Plan:
        """Store a new plan version: version 1 of a new code, or the next version of one."""
        latest = self._session.scalar(
            select(BillingPlanVersion.version)
            .where(BillingPlanVersion.code == plan.code)
            .order_by(BillingPlanVersion.version.desc())
            .limit(1)
        )
        expected = 1 if latest is None else latest + 1
        if plan.version != expected:
            raise PlanVersionConflict(
                f"plan {plan.code}: cannot publish version {plan.version}, "
                f"the next version is {expected}"
            )
        terms = plan_to_dict(plan)
        book = terms.pop("price_book", None)
        price_book_id = None if book is None else self.save_price_book(price_book_from_dict(book))
        self._session.add(
            BillingPlanVersion(
                id=new_id("planv"),
                code=plan.code,
                version=plan.version,
                kind=plan.kind.value,
                currency=plan.currency,
                price_book_id=price_book_id,
                terms=terms,
            )
        )
        try:
            self._session.flush()
        except IntegrityError as exc:
            raise PlanVersionConflict(f"plan {plan.ref} was published concurrently") from exc
        return plan

    def version_id(self, ref: PlanRef) -> str:
        """The stored id of a plan version (what a subscription row points at)."""
        return self._plan_row(ref).id

    def _plan_row(self, ref: PlanRef) -> BillingPlanVersion:
        row = self._session.scalar(
            select(BillingPlanVersion).where(
                BillingPlanVersion.code == ref.code, BillingPlanVersion.version == ref.version
            )
        )
        if row is None:
            raise PlanNotFound(f"no plan version {ref}", param="plan")
        return row

    def _plan_from_row(self, row: BillingPlanVersion) -> Plan:
        document: dict[str, Any] = dict(row.terms)
        if row.price_book_id is not None:
            book = self._session.get(BillingPriceBook, row.price_book_id)
            assert book is not None  # a foreign key
            document["price_book"] = book.document
        return plan_from_dict(document)

    def load_version(self, plan_version_id: str) -> Plan:
        """The plan version stored under ``plan_version_id`` (a subscription's foreign key)."""
        row = self._session.get(BillingPlanVersion, plan_version_id)
        assert row is not None  # a foreign key
        return self._plan_from_row(row)

    def load_plan(self, code: str, version: int | None = None) -> Plan:
        """One plan version; the latest when ``version`` is None. ``PlanNotFound`` if none."""
        if version is not None:
            return self._plan_from_row(self._plan_row(PlanRef(code, version)))
        row = self._session.scalar(
            select(BillingPlanVersion)
            .where(BillingPlanVersion.code == code)
            .order_by(BillingPlanVersion.version.desc())
            .limit(1)
        )
        if row is None:
            raise PlanNotFound(f"no plan {code!r}", param="plan")
        return self._plan_from_row(row)

    def plan_catalog(self) -> PlanCatalog:
        """Every stored version of every plan."""
        catalog = PlanCatalog()
        rows = self._session.scalars(
            select(BillingPlanVersion).order_by(BillingPlanVersion.code, BillingPlanVersion.version)
        )
        for row in rows:
            catalog.publish(self._plan_from_row(row))
        return catalog

    def latest_versions(self) -> list[tuple[str, int, int]]:
        """Each plan code with its latest version and how many versions it has, by code."""
        rows = self._session.execute(
            select(
                BillingPlanVersion.code,
                func.max(BillingPlanVersion.version),
                func.count(BillingPlanVersion.id),
            )
            .group_by(BillingPlanVersion.code)
            .order_by(BillingPlanVersion.code)
        ).all()
        return [(code, latest, count) for code, latest, count in rows]
