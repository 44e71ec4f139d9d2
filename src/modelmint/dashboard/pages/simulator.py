"""The pricing simulator: paste (or load) a candidate price TOML and see, per organisation,
how a month's revenue and margin would have changed, and how the plan kinds compare."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from modelmint.analytics import Simulation, parse_candidate, simulate
from modelmint.analytics.repricing import checked_elasticity
from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.clock import utcnow
from modelmint.dashboard import charts
from modelmint.dashboard.auth import CheckedForm, CurrentSession
from modelmint.dashboard.forms import Form
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page
from modelmint.errors import InvalidRequest, ModelMintError
from modelmint.platform import PlatformDep

__all__ = ["SimulationRequest", "router", "run_simulation", "sample_prices"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)


class SimulationRequest:
    """The simulator form, checked: the month, the candidate document, the elasticity."""

    def __init__(self, form: Form) -> None:
        self.text = form.get("prices", "")
        self.period = Period.parse(form.text("period") or f"{utcnow():%Y-%m}")
        self.currency = form.optional("currency")
        self.elasticity = checked_elasticity(form.optional("elasticity"))
        if not self.text.strip():
            raise InvalidRequest("paste a candidate price file (TOML)", param="prices")
        try:
            self.document = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidRequest(
                f"the price file is not valid TOML: {exc}", param="prices"
            ) from None


def run_simulation(session: Session, wanted: SimulationRequest) -> Simulation:
    """The simulation, in a transaction rolled back afterwards: simulating never writes."""
    try:
        return simulate(
            session,
            parse_candidate(wanted.document),
            wanted.period,
            elasticity=wanted.elasticity,
            currency=wanted.currency,
        )
    finally:
        session.rollback()


def _result_view(result: Simulation) -> dict[str, Any]:
    rows = result.organizations
    figure = charts.simulation_changes(
        [r.name for r in rows], [r.change for r in rows], result.currency
    )
    return {
        "result": result,
        "actual_margin": EXACT.subtract(result.actual_revenue, result.actual_cost),
        "simulated_margin": EXACT.subtract(result.simulated_revenue, result.simulated_cost),
        "charts": [("chart-simulation", figure, "Revenue change per organisation")] if rows else [],
    }


def _context(form: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "title": "Pricing simulator",
        "active": "simulator",
        "form": form,
        "result": None,
        "charts": [],
        "error": "",
        **extra,
    }


@cache
def sample_prices() -> str:
    """The example candidate the form starts with (the demo prices, a few changed)."""
    return (files("modelmint.dashboard") / "templates" / "simulator_sample.toml").read_text()


def _default_form() -> dict[str, str]:
    month = f"{utcnow():%Y-%m}"
    return {"period": month, "prices": sample_prices(), "elasticity": "", "currency": ""}


@router.get("/simulator")
async def simulator_page(request: Request, session: CurrentSession) -> Response:
    return page(request, session, "simulator.html", _context(_default_form()))


@router.post("/simulator")
async def run_simulator(
    request: Request, session: CurrentSession, platform: PlatformDep, form: CheckedForm
) -> Response:
    shown = {name: form.get(name, "") for name in ("period", "prices", "elasticity", "currency")}
    try:
        wanted = SimulationRequest(form)
        result = await platform.in_session(lambda s: run_simulation(s, wanted))
    except ModelMintError as error:
        context = _context(shown, error=error.message)
        return page(request, session, "simulator.html", context, status_code=error.status_code)
    return page(request, session, "simulator.html", _context(shown, **_result_view(result)))
