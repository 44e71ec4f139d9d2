"""Plans for people: publishing a version, listing plans, showing one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from modelmint.billing.errors import InvalidPlan
from modelmint.billing.plans import Plan
from modelmint.billing.serialization import Json, decimal_text, plan_from_dict, plan_to_dict
from modelmint.billing.store import BillingStore
from modelmint.billing_admin.fields import CODE_CHARS

__all__ = ["list_plans", "publish_plan", "show_plan"]


def _plan_summary(plan: Plan, versions: int) -> Json:
    return {
        "code": plan.code,
        "kind": plan.kind.value,
        "version": plan.version,
        "versions": versions,
        "currency": plan.currency,
        "fixed_fee": decimal_text(plan.fixed_fee.amount),
    }


def publish_plan(session: Session, document: Mapping[str, Any]) -> Json:
    """Publish a plan version (the format of ``serialization.plan_from_dict``).

    Version 1 of a new code, or exactly the next version of an existing one
    (``PlanVersionConflict`` otherwise): published versions never change.
    """
    plan = plan_from_dict(document)
    if len(plan.code) > CODE_CHARS:
        raise InvalidPlan(f"plan code is longer than {CODE_CHARS} characters", param="code")
    BillingStore(session).plans.publish_plan(plan)
    return plan_to_dict(plan)


def list_plans(session: Session) -> list[Json]:
    """Each plan code's latest version, with how many versions it has."""
    plans = BillingStore(session).plans
    return [
        _plan_summary(plans.load_plan(code, latest), count)
        for code, latest, count in plans.latest_versions()
    ]


def show_plan(session: Session, code: str, version: int | None = None) -> Json:
    """One plan version (the latest when ``version`` is None), as publishable JSON."""
    return plan_to_dict(BillingStore(session).plans.load_plan(code, version))
