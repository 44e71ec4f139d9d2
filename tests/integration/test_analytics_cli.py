"""`modelmint report` and `modelmint simulate` on a generated month, in every format."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from modelmint.analytics import Dimension, breakdown
from modelmint.cli.main import app
from modelmint.storage import Database, migrate
from tests.integration.test_analytics import OCTOBER, World, build_world
from tests.support.processes import cli

D = Decimal


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, World]]:
    folder = tmp_path_factory.mktemp("analytics-cli")
    database = Database(f"sqlite:///{folder / 'modelmint.db'}")
    migrate(database)
    world = build_world(database, count=400)
    yield folder, world
    database.dispose()


@pytest.fixture
def run(home: tuple[Path, World], monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("MODELMINT_HOME", str(home[0]))
    monkeypatch.delenv("MODELMINT_DATABASE_URL", raising=False)
    yield CliRunner()


def invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_revenue_by_organisation_as_json_is_exact(run: CliRunner, home: tuple[Path, World]) -> None:
    document = orjson.loads(
        invoke(run, "report", "revenue", "--by", "org", "--period", "2026-10", "--format", "json")
    )
    with home[1].database.session() as session:
        expected = breakdown(session, OCTOBER, Dimension.ORGANIZATION)
    assert document["currency"] == "USD" and document["by"] == "org"
    rows = {row["key"]: row for row in document["rows"]}
    for row in expected.rows:
        assert D(rows[row.key]["accrued"]) == row.revenue
        assert D(rows[row.key]["usage_revenue"]) == row.usage_revenue
    assert D(document["total"]["accrued"]) == expected.total.revenue
    assert D(document["mrr"]) > 0


def test_margins_as_csv_and_usage_as_a_table(run: CliRunner, home: tuple[Path, World]) -> None:
    text = invoke(
        run, "report", "margins", "--by", "plan", "--period", "2026-10", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    with home[1].database.session() as session:
        expected = breakdown(session, OCTOBER, Dimension.PLAN)
    assert rows[-1]["key"] == "total"
    assert D(rows[-1]["margin"]) == expected.total.margin
    assert {r["name"] for r in rows[:-1]} == {r.label for r in expected.rows}
    table = invoke(run, "report", "usage", "--period", "2026-10")
    assert "smollm2-135m-instruct" in table and "p95_ms" in table
    assert "(fixed fees)" not in table


@pytest.mark.parametrize("command", ["costs", "customers", "cohorts"])
def test_the_other_reports_run_in_every_format(run: CliRunner, command: str) -> None:
    extra = [] if command == "cohorts" else ["--period", "2026-10"]
    for output in ("table", "csv", "json"):
        text = invoke(run, "report", command, *extra, "--format", output)
        if output == "json":
            assert orjson.loads(text)


def test_simulating_todays_prices_changes_nothing(run: CliRunner, tmp_path: Path) -> None:
    prices = tmp_path / "same.toml"
    prices.write_text("# no change\n")
    document = orjson.loads(
        invoke(run, "simulate", "--prices", str(prices), "--period", "2026-10", "--format", "json")
    )
    assert D(document["total"]["change"]) == 0
    assert D(document["total"]["simulated_revenue"]) > 0
    assert {o["plan"] for o in document["plan_options"]} == {
        "free",
        "starter",
        "payg",
        "enterprise",
    }
    cheaper = tmp_path / "cheaper.toml"
    cheaper.write_text(
        '[prices."smollm2-135m-instruct"]\n'
        'input_tokens = { type = "flat", amount = "0", per_units = 1_000_000 }\n'
        'output_tokens = { type = "flat", amount = "0", per_units = 1_000_000 }\n'
    )
    table = invoke(run, "simulate", "--prices", str(cheaper), "--period", "2026-10",
                   "--elasticity", "-0.3")  # fmt: skip
    assert "would pay more" in table and "elasticity -0.3" in table
    csv_text = invoke(
        run, "simulate", "--prices", str(cheaper), "--period", "2026-10", "--format", "csv"
    )
    assert csv_text.startswith("organization,") and "\nplan,kind," in csv_text


def test_mistakes_exit_with_a_message_not_a_traceback(
    home: tuple[Path, World], tmp_path: Path
) -> None:
    env = {"MODELMINT_HOME": str(home[0])}
    bad_period = cli(env, "report", "revenue", "--period", "November", check=False)
    missing = cli(env, "simulate", "--prices", str(tmp_path / "none.toml"), check=False)
    prices = tmp_path / "p.toml"
    prices.write_text("")
    bad_elasticity = cli(
        env, "simulate", "--prices", str(prices), "--elasticity", "lots", check=False
    )
    # Positive: demand would grow with the price.
    rising_demand = cli(env, "simulate", "--prices", str(prices), "--elasticity", "2", check=False)
    for result, words in (
        (bad_period, "not a month"),
        (missing, "cannot read"),
        (bad_elasticity, "not a number"),
        (rising_demand, "between -10 and 0"),
    ):
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr
