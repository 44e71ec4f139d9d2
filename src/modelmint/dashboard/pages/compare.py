"""Compare versions: ``modelmint compare MODEL --versions 3,4`` as a dashboard page.

The numbers and the recommendation are ``feedback.compare.compare_versions``'s, shown
unchanged; this module only parses the form, picks the default versions (the two newest)
and lays the comparison out as rows of a table with one column per version.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.dashboard.auth import CurrentSession
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page
from modelmint.errors import InvalidRequest, ModelMintError
from modelmint.feedback.compare import Comparison, VersionReport, compare_versions
from modelmint.platform import PlatformDep
from modelmint.registry.versions import list_versions
from modelmint.storage.tables import RegisteredModel

__all__ = [
    "Cell",
    "CompareRow",
    "compare_data",
    "comparison_rows",
    "default_versions",
    "parse_versions",
    "router",
]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)

# The form's text is echoed back into the page; no model has more versions than this.
_MAX_VERSIONS_TEXT = 200


@dataclass(frozen=True, slots=True)
class Cell:
    """One value as shown, and its exact value for the tooltip when they differ."""

    shown: str
    exact: str = ""


@dataclass(frozen=True, slots=True)
class CompareRow:
    key: str  # stable id for the row, used in the HTML (and by tests)
    label: str
    cells: tuple[Cell, ...]


def parse_versions(text: str) -> list[int]:
    """``"3, 4"`` -> ``[3, 4]``; anything but whole numbers is a 400."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() for part in parts):
        raise InvalidRequest(
            f"versions {text!r}: give version numbers separated by commas, e.g. 3,4",
            param="versions",
        )
    return [int(part) for part in parts]


def default_versions(session: Session, model: str) -> list[int]:
    """The two newest registered versions of ``model`` (404 for an unknown model)."""
    numbers = [v.version for v in list_versions(session, model)]
    return numbers[-2:]


def _model_names(session: Session) -> list[str]:
    return list(session.scalars(select(RegisteredModel.name).order_by(RegisteredModel.name)))


def _float(value: float | None, places: int) -> Cell:
    if value is None:
        return Cell("—")
    return Cell(f"{value:.{places}f}", repr(value))


def _decimal(value: Decimal | None, suffix: str = "") -> Cell:
    return Cell("—") if value is None else Cell(f"{value}{suffix}")


def _score(report: VersionReport) -> Cell:
    score = report.score
    if score.mean is None:
        return Cell("no ratings")
    interval = ""
    if score.low is not None and score.high is not None:
        interval = f" [{score.low:.3f}, {score.high:.3f}]"
    exact = f"mean {score.mean!r}, 95% interval [{score.low!r}, {score.high!r}]"
    return Cell(f"{score.mean:.3f}{interval}", exact)


def _per_1k(report: VersionReport) -> dict[str, Decimal | None]:
    return {
        "revenue_per_1k": report.per_1k(report.revenue),
        "cost_per_1k": report.per_1k(report.cost),
        "margin_per_1k": report.per_1k(report.margin),
    }


def _money_rows(versions: tuple[VersionReport, ...]) -> list[CompareRow]:
    amounts = [(_per_1k(r), f" {r.currency}") for r in versions]
    return [
        CompareRow(key, label, tuple(_decimal(per[key], unit) for per, unit in amounts))
        for key, label in (
            ("revenue_per_1k", "Revenue / 1k requests"),
            ("cost_per_1k", "Cost / 1k requests"),
            ("margin_per_1k", "Margin / 1k requests"),
        )
    ]


def comparison_rows(comparison: Comparison) -> list[CompareRow]:
    """The comparison as the CLI's table: one row per measure, one cell per version."""
    versions = comparison.versions
    rows = [
        CompareRow("score", "Feedback score (95% interval)", tuple(_score(r) for r in versions)),
        CompareRow("ratings", "Ratings", tuple(Cell(str(r.score.count)) for r in versions)),
    ]
    for name in sorted({m for r in versions for m in r.metrics}):
        cells = tuple(_float(r.metrics.get(name), 4) for r in versions)
        # Each version's registered metrics, measured on its own test split.
        rows.append(CompareRow(f"metric-{name}", f"{name} (own test split)", cells))
    rows += [
        CompareRow("requests", "Requests", tuple(Cell(str(r.requests)) for r in versions)),
        CompareRow("errors", "Model errors (5xx)", tuple(Cell(str(r.errors)) for r in versions)),
        CompareRow(
            "client_errors",
            "Client errors (4xx)",
            tuple(Cell(str(r.client_errors)) for r in versions),
        ),
        CompareRow(
            "error_rate", "Error rate (model)", tuple(_decimal(r.error_rate) for r in versions)
        ),
        CompareRow(
            "latency", "Latency ms (mean)", tuple(_decimal(r.avg_latency_ms) for r in versions)
        ),
        *_money_rows(versions),
    ]
    return rows


def compare_data(session: Session, model: str, versions: str) -> dict[str, Any]:
    """The comparison of ``model``'s ``versions`` (default: its two newest) as page data."""
    numbers = parse_versions(versions) if versions.strip() else default_versions(session, model)
    if len(numbers) < 2:
        raise InvalidRequest(
            f"model {model!r} needs at least two versions to compare; "
            f"got {', '.join(map(str, numbers)) or 'none'}",
            param="versions",
        )
    comparison = compare_versions(session, model, numbers)
    return {
        "comparison": comparison,
        "rows": comparison_rows(comparison),
        "versions_text": ",".join(str(r.version) for r in comparison.versions),
    }


def _page_data(session: Session, model: str, versions: str) -> dict[str, Any]:
    """Page data; a user's mistake (unknown model or version) becomes a message, not a 500."""
    data: dict[str, Any] = {
        "model_names": _model_names(session),
        "comparison": None,
        "rows": [],
        "versions_text": versions,
        "error": None,
        "status_code": 200,
    }
    if not model:
        return data
    try:
        data.update(compare_data(session, model, versions))
    except ModelMintError as error:
        data.update(error=error.message, status_code=error.status_code)
    return data


@router.get("/compare")
async def compare_page(
    request: Request,
    session: CurrentSession,
    platform: PlatformDep,
    model: str = Query(default="", max_length=200),
    versions: str = Query(default="", max_length=_MAX_VERSIONS_TEXT),
) -> Response:
    model = model.strip()
    data = await platform.in_session(lambda s: _page_data(s, model, versions))
    status_code = data.pop("status_code")
    context = {"title": "Compare versions", "active": "compare", "model": model, **data}
    return page(request, session, "compare.html", context, status_code=status_code)
