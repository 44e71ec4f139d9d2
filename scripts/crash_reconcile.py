"""Crash safety, reconciled: SIGKILL a paid gateway three times under load, then audit.

Extends tests/integration/test_crash_safety.py (one kill, usage only) to what the
reliability report promises: three kills at random moments, a restart after each on
the same SQLite database, and then

* usage: every answer the client received has exactly one usage record (0 lost,
  0 duplicated); records beyond those are answers cut by a kill while in flight;
* money: the month's invoice subtotal, closed afterwards, equals a recomputation from the
  usage records' own charges.

    python -m scripts.crash_reconcile            # three kills, seed from the clock
    python -m scripts.crash_reconcile --seed 7   # the same kill moments again
    python -m scripts.crash_reconcile --seed 7 --kill-after 20 60   # a short run

Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
from bench.gateway import PREPAID_PLAN
from rich.console import Console
from rich.table import Table
from tests.integration.test_crash_safety import CONCURRENCY, drive
from tests.support.processes import MockUpstreamProcess, Server, cli, cli_json

__all__ = ["Check", "main", "reconcile"]

GRANT = Decimal("1000000.00")


def prepare(server: Server, upstream: MockUpstreamProcess, workdir: Path) -> str:
    """A remote model, a paying organisation with a funded wallet; returns its key."""
    env = server.env
    cli(env, "models", "add-remote", "mock", "--base-url", upstream.base_url)
    key: str = cli_json(env, "keys", "create", "--org", "crash", "--create-org")["key"]
    plan = workdir / "plan.json"
    plan.write_bytes(orjson.dumps(PREPAID_PLAN))
    cli(env, "plans", "publish", str(plan))
    cli(env, "subscriptions", "subscribe", "--org", "crash", "--plan", PREPAID_PLAN["code"])
    cli(env, "wallets", "grant", "--org", "crash", "--amount", str(GRANT), "--paid")
    return key


def crash_cycles(
    server: Server, key: str, kills: int, rng: random.Random, kill_after: tuple[int, int]
) -> set[str]:
    """Start, load and SIGKILL the gateway ``kills`` times; the answers received in full."""
    received: set[str] = set()
    for n in range(kills):
        aim = rng.randint(*kill_after)
        server.start(ready_timeout=60)
        got = asyncio.run(drive(server, key, kill_after=aim))
        print(f"# kill {n + 1}: SIGKILL after {len(got)} answers (aimed at {aim})")
        received |= got
    server.start(ready_timeout=60)  # it must come up cleanly after the last crash
    with httpx.Client(timeout=30) as client:
        after = client.post(
            server.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "mock", "messages": [{"role": "user", "content": "after"}]},
        )
    after.raise_for_status()
    received.add(after.headers["x-request-id"])
    return received


def invoiced_usage(server: Server) -> Decimal:
    """The exact amount of the usage lines on the organisation's invoices, closed now.

    The exact amounts, not the rounded ones: the recomputation is to the last unit, and
    a prepaid plan's invoice nets the usage against the wallet (its total is 0.00)."""
    period = datetime.now(UTC).strftime("%Y-%m")
    cli(server.env, "invoices", "close", "--period", period, "--allow-open", "--org", "crash")
    total = Decimal(0)
    for header in cli_json(server.env, "invoices", "list", "--org", "crash"):
        document = orjson.loads(cli(server.env, "invoices", "show", header["id"]).stdout)
        usage = [line for line in document["lines"] if line["kind"] == "usage"]
        total += sum((Decimal(line["exact_amount"]) for line in usage), Decimal(0))
    return total


@dataclass(frozen=True)
class Check:
    figure: object
    ok: bool


def reconcile(
    workdir: Path, kills: int, seed: int, kill_after: tuple[int, int]
) -> dict[str, Check]:
    """Run the crash cycles with ``workdir`` as the (empty) home; every check, by name.

    ``kill_after`` bounds the number of answers after which each SIGKILL lands."""
    upstream = MockUpstreamProcess()
    server = Server(home=workdir, extra_env={"MODELMINT_LOAD_BUNDLED_MODELS": "false"})
    try:
        key = prepare(server, upstream, workdir)
        received = crash_cycles(server, key, kills, random.Random(seed), kill_after)
        with sqlite3.connect(workdir / "modelmint.db") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
            rows = db.execute(
                "SELECT id, charge FROM usage_records WHERE status_code = 200"
            ).fetchall()
        charged = sum((Decimal(str(c)) for _, c in rows if c is not None), Decimal(0))
        invoiced = invoiced_usage(server)
    finally:
        server.stop()
        upstream.stop()
    metered = [row[0] for row in rows]
    cut = set(metered) - received
    return {
        "database integrity": Check(integrity, integrity == "ok"),
        "answers received": Check(len(received), len(received) > 0),
        "lost (received, no record)": Check(len(received - set(metered)), received <= set(metered)),
        "duplicated records": Check(
            len(metered) - len(set(metered)), len(metered) == len(set(metered))
        ),
        "cut in flight (record, no answer)": Check(len(cut), len(cut) <= kills * CONCURRENCY),
        "usage charges": Check(charged, charged > 0),
        "invoiced usage (exact)": Check(invoiced, invoiced == charged),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--kill-after",
        type=int,
        nargs=2,
        default=(50, 400),
        metavar=("MIN", "MAX"),
        help="each kill lands after a random number of answers in [MIN, MAX]",
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    workdir = Path(tempfile.mkdtemp(prefix="modelmint-crash-"))
    checks = reconcile(workdir, args.kills, seed, tuple(args.kill_after))
    table = Table(title=f"Crash reconciliation ({args.kills} SIGKILLs, seed {seed})")
    for column in ("check", "figure", "ok"):
        table.add_column(column)
    for name, check in checks.items():
        table.add_row(name, str(check.figure), "yes" if check.ok else "NO")
    Console().print(table)
    sys.exit(0 if all(check.ok for check in checks.values()) else 1)


if __name__ == "__main__":
    main()
