"""Billing errors sit in the one ModelMint tree, so every edge maps them without billing."""

from __future__ import annotations

import ast
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import modelmint.billing as billing
from modelmint.billing import errors as billing_errors
from modelmint.errors import Conflict, InsufficientQuota, InvalidRequest, ModelMintError, NotFound

PACKAGE = Path(billing.__file__).parent


@pytest.mark.parametrize(
    ("error", "parent", "status"),
    [
        (billing.InvalidPriceBook, InvalidRequest, 400),
        (billing.CurrencyMismatch, InvalidRequest, 400),
        (billing.InvalidMoney, InvalidRequest, 400),
        (billing.InvalidQuantity, InvalidRequest, 400),
        (billing.PriceNotFound, NotFound, 404),
        (billing.PlanNotFound, NotFound, 404),
        (billing.UnknownReservation, NotFound, 404),
        (billing.InvalidInvoiceTransition, Conflict, 409),
        (billing.InvoiceImmutable, Conflict, 409),
        (billing.PlanVersionConflict, Conflict, 409),
        (billing.ChargeMismatch, ModelMintError, 500),
    ],
)
def test_each_error_maps_to_its_parent_status(
    error: type[ModelMintError], parent: type[ModelMintError], status: int
) -> None:
    assert issubclass(error, parent)
    assert error("boom").status_code == status


def test_quota_errors_keep_the_openai_code_and_carry_details() -> None:
    credit = billing.InsufficientCredit("short", needed=Decimal(5), available=Decimal(2))
    assert isinstance(credit, InsufficientQuota)
    assert credit.status_code == 402
    assert credit.to_body()["error"] == {
        "message": "short",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    cap = billing.UsageCapExceeded(
        "cap", metric="input_tokens", limit=Decimal(10), used=Decimal(9), requested=Decimal(2)
    )
    assert cap.status_code == 402
    assert cap.to_body()["error"]["param"] == "input_tokens"  # type: ignore[index]


def test_every_billing_error_is_exported_and_in_the_tree_docstring() -> None:
    doc = billing_errors.__doc__ or ""
    for name in billing_errors.__all__:
        assert issubclass(getattr(billing_errors, name), ModelMintError)
        assert name in billing.__all__
        assert name in doc


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_billing_imports_only_the_standard_library_and_the_error_tree(path: Path) -> None:
    # invoice_pdf only renders an invoice as a document, and may use the PDF library for it.
    _check_imports(path, edge=False, renderer=path.name == "invoice_pdf.py")


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "store").glob("*.py")), ids=lambda p: f"store/{p.name}"
)
def test_the_billing_store_is_the_one_edge_to_storage(path: Path) -> None:
    _check_imports(path, edge=True, renderer=False)


def _check_imports(path: Path, *, edge: bool, renderer: bool) -> None:
    for name in _imports(path):
        top = name.split(".")[0]
        allowed = (
            top in sys.stdlib_module_names
            or name == "modelmint.errors"
            or name == "modelmint.billing"
            or name.startswith("modelmint.billing.")
            or (edge and (top == "sqlalchemy" or name.startswith("modelmint.storage")))
            or (edge and name in ("modelmint.clock", "modelmint.ids"))
            or (renderer and top == "reportlab")
        )
        assert allowed, f"{path} imports {name}"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_billing_never_builds_a_float(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id != "float", f"{path.name}:{node.lineno} calls float()"
        if isinstance(node, ast.Constant):
            assert not isinstance(node.value, float), f"{path.name}:{node.lineno} float literal"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_every_module_has_a_docstring_and_all(path: Path) -> None:
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    assigned = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert "__all__" in assigned, f"{path.name} has no __all__"
