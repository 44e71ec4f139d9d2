"""Gateway overhead: ModelMint vs the LiteLLM proxy in front of the same instant upstream.

    make bench-gateway            (or: .venv/bin/python -m bench.gateway)

One run on one machine starts a mock OpenAI upstream that answers at once (with a
usage block, streaming too), ModelMint with a remote deployment pointing at it and
durable metering on (SQLite, and PostgreSQL when reachable), and the LiteLLM proxy
(its own venv, no database, logging off, the same worker count) pointing at the
same mock. wrk drives each at concurrency 1, 16 and 64, streaming and not, and the
bench prints requests/s, p50/p99 latency, latency added over the direct upstream,
ratio lines such as ``gateway_c64_rps_ratio_vs_litellm: 12.4``, and a metering check:
after an exact-count run, usage rows must equal the 2xx answers received.

Two more ModelMint runs (SQLite and PostgreSQL) put the client on a prepaid plan, so
that every request is also admitted against the wallet (from the process's credit
lease) and rated and settled by the writer: the price of billing. Their check adds
that the wallet consumed exactly the sum of the request charges, with nothing left
held or leased once the gateway stopped, and they print, per database,
``gateway_<db>_prepaid_c64_ratio_vs_unbilled`` (prepaid req/s over the same
database's unbilled req/s) and ``gateway_<db>_prepaid_c1_added_p50_ms`` beside the
unbilled run's added p50, and both again as the median over the rounds of each round's
prepaid figure against the unbilled one measured beside it (``..._paired_median``).

    .venv/bin/python -m bench.gateway --only postgres,postgres-prepaid   (a subset)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
from sqlalchemy import create_engine, text

from bench.common import (
    BENCH_HOME,
    ROOT,
    WrkResult,
    free_port,
    lua_exact_count,
    lua_post,
    peer_venv,
    process,
    say,
    wait_until_ready,
    wrk,
)

LITELLM = "litellm[proxy]==1.106.2"
POSTGRES_ADMIN = os.environ.get(
    "MODELMINT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CONCURRENCY = (1, 16, 64)
EXACT_REQUESTS = 3000
# Every token and request priced, so each request really reserves, charges and settles.
PREPAID_PLAN = {
    "kind": "prepaid",
    "code": "bench-payg",
    "version": 1,
    "price_book": {
        "currency": "USD",
        "prices": [
            {"target": "*", "metric": metric, "charge": {"type": "flat", "amount": amount}}
            for metric, amount in (
                ("input_tokens", "0.0000015"),
                ("output_tokens", "0.000006"),
                ("requests", "0.0001"),
            )
        ],
        "model_groups": {},
    },
}


@dataclass
class Target:
    name: str
    base: str  # URL up to and including /v1
    headers: dict[str, str]
    model: str


def chat_body(model: str, stream: bool) -> str:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body).decode()


@contextlib.contextmanager
def mock_upstream(workdir: Path) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "tests.support.mock_upstream", "--port", str(port)]
    with process(args, log=workdir / "mock.log") as child:
        wait_until_ready(f"http://127.0.0.1:{port}/v1/models", child)
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def postgres_database() -> Iterator[str | None]:
    """A fresh database on the local PostgreSQL, or None when there is none."""
    try:
        import psycopg

        admin = psycopg.connect(
            "host=127.0.0.1 user=postgres dbname=test", autocommit=True, connect_timeout=2
        )
    except Exception as exc:
        say(f"PostgreSQL not reachable ({exc.__class__.__name__}); skipping its runs")
        yield None
        return
    name = f"modelmint_bench_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


CLI = [sys.executable, "-m", "modelmint"]


def provision(env: dict[str, str], upstream: str, workdir: Path, prepaid: bool) -> str:
    """Set up a ModelMint home (``env`` names it and its database) the way the bench
    measures it: the mock upstream as model "mock", an organisation "bench" and its key
    (returned), and with ``prepaid`` the prepaid plan and a large paid wallet grant."""
    run_env = {**os.environ, **env}

    def cli(*command: str) -> bytes:
        return subprocess.run([*CLI, *command], env=run_env, check=True, capture_output=True).stdout

    cli("models", "add-remote", "mock", "--base-url", upstream)
    created = cli("keys", "create", "--org", "bench", "--create-org", "--json")
    if prepaid:
        plan = workdir / "prepaid-plan.json"
        plan.write_bytes(orjson.dumps(PREPAID_PLAN))
        cli("plans", "publish", str(plan))
        cli("subscriptions", "subscribe", "--org", "bench", "--plan", "bench-payg")
        cli("wallets", "grant", "--org", "bench", "--amount", "1000000.00", "--paid")
    return str(orjson.loads(created)["key"])


@contextlib.contextmanager
def modelmint(
    workdir: Path, upstream: str, workers: int, database_url: str | None, prepaid: bool = False
) -> Iterator[tuple[Target, str]]:
    name = (
        "modelmint-" + ("postgres" if database_url else "sqlite") + ("-prepaid" if prepaid else "")
    )
    home = workdir / name
    port = free_port()
    env = {
        "MODELMINT_HOME": str(home),
        "MODELMINT_PORT": str(port),
        "MODELMINT_LOAD_BUNDLED_MODELS": "false",
        "MODELMINT_ADMIN_TOKEN": "bench-admin",
    }
    if database_url:
        env["MODELMINT_DATABASE_URL"] = database_url
    key = provision(env, upstream, workdir, prepaid)
    db_url = database_url or f"sqlite:///{home / 'modelmint.db'}"
    with process(
        [*CLI, "up", "--workers", str(workers)], env=env, log=home / "server.log"
    ) as child:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base + "/readyz", child)
        target = Target(
            name,
            base + "/v1",
            {"Authorization": f"Bearer {key}"},
            "mock",
        )
        warm(target, workers * 20)
        yield target, db_url


@contextlib.contextmanager
def litellm(workdir: Path, upstream: str, workers: int) -> Iterator[Target]:
    venv = peer_venv("litellm", LITELLM)
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: mock\n"
        "    litellm_params:\n"
        "      model: openai/mock\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-mock\n"
        "general_settings:\n"
        "  master_key: sk-bench\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    args = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--port",
        str(port),
        "--num_workers",
        str(workers),
    ]
    with process(args, env=env, log=workdir / "litellm.log") as child:
        headers = {"Authorization": "Bearer sk-bench"}
        wait_until_ready(f"http://127.0.0.1:{port}/health/liveliness", child)
        target = Target("litellm", f"http://127.0.0.1:{port}/v1", headers, "mock")
        # Its first request per worker takes over a second; warm them all.
        warm(target, workers * 20)
        yield target


def warm(target: Target, count: int) -> None:
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            response = client.post(
                target.base + "/chat/completions",
                headers={**target.headers, "Content-Type": "application/json"},
                content=chat_body(target.model, False),
            )
            response.raise_for_status()


Points = dict[tuple[int, bool], WrkResult]
# Every round of every point, per target: the paired estimates compare round by round.
Rounds = dict[str, dict[tuple[int, bool], list[WrkResult]]]


def measure(
    targets: list[Target],
    workdir: Path,
    seconds: float,
    rounds: int = 1,
    history: Rounds | None = None,
) -> dict[str, Points]:
    """Each point for every target: ``rounds`` rounds of ``seconds / rounds`` each, the
    targets taking turns within a round, and each target's best round kept (every
    round also goes to ``history``). Targets measured together meet the same moments
    of a noisy machine."""
    results: dict[str, Points] = {t.name: {} for t in targets}
    kept: Rounds = history if history is not None else {}
    for stream in (False, True):
        for connections in CONCURRENCY:
            for _ in range(rounds):
                for target in targets:
                    headers = {**target.headers, "Content-Type": "application/json"}
                    body = chat_body(target.model, stream)
                    result = wrk(
                        target.base.removesuffix("/v1") + "/v1/chat/completions",
                        lua_post("/v1/chat/completions", body, headers),
                        connections=connections,
                        seconds=seconds / rounds,
                        workdir=workdir,
                    )
                    point = kept.setdefault(target.name, {})
                    point.setdefault((connections, stream), []).append(result)
                    best = results[target.name].get((connections, stream))
                    if best is None or result.rps > best.rps:
                        results[target.name][connections, stream] = result
            for target in targets:
                result = results[target.name][connections, stream]
                say(
                    f"{target.name:26} c={connections:<3} stream={stream!s:5} "
                    f"{result.rps:9.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms  errors {result.errors}"
                )
    return results


def paths(target: Target) -> str:
    """How the gateway admitted and wrote paid requests (its Prometheus counters)."""
    text_ = httpx.get(target.base.removesuffix("/v1") + "/metrics", timeout=10).text
    counts = [
        line
        for line in text_.splitlines()
        if line.startswith(("modelmint_usage_batches_total", "modelmint_credit_lease_admissions"))
    ]
    return "; ".join(line.split("{", 1)[1].replace("}", "") for line in counts)


def metered(db_url: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT COUNT(*) FROM usage_records WHERE status_code = 200")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def settled_count(db_url: str) -> int:
    """The usage row count once it stops moving: requests cut when wrk stopped at the end
    of the previous run are still metered a moment later, and must not be counted here."""
    last = metered(db_url)
    while True:
        time.sleep(1.0)
        now = metered(db_url)
        if now == last:
            return now
        last = now


def check_metering(target: Target, db_url: str, workdir: Path, rps: float) -> bool:
    """An exact-count run at concurrency 64: every 2xx answer received has one usage row."""
    before = settled_count(db_url)
    per_thread = EXACT_REQUESTS // 2
    headers = {**target.headers, "Content-Type": "application/json"}
    script = lua_exact_count(
        "/v1/chat/completions", chat_body(target.model, False), headers, per_thread, "/healthz"
    )
    seconds = max(5.0, 3 * EXACT_REQUESTS / max(rps, 1.0))
    result = wrk(
        target.base + "/chat/completions", script, connections=64, seconds=seconds, workdir=workdir
    )
    received = int(result.extra.get("OK", "-1"))
    rows = settled_count(db_url) - before
    # wrk asks a thread's script for one request it never sends, so a thread may fall one
    # short of its quota; what matters is that rows equal the answers received.
    exact = rows == received and received >= EXACT_REQUESTS - 2
    verdict = "exact" if exact else "MISMATCH"
    say(f"{target.name}: metering check: {received} 2xx answers, {rows} new usage rows: {verdict}")
    return exact


def reset(database_url: str | None) -> None:
    """Empty the PostgreSQL database between runs: each starts from a fresh schema."""
    assert database_url is not None
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def check_wallet(db_url: str) -> bool:
    """The wallet consumed exactly what the requests were charged; nothing is left held
    or leased (the gateway has stopped and handed its leases back)."""
    engine = create_engine(db_url)
    try:
        with engine.connect() as connection:
            # `up` seeds demo customers too; only the bench organisation sends traffic.
            org = connection.execute(
                text("SELECT id FROM organizations WHERE name = 'bench'")
            ).scalar_one()
            # Exact decimals are text on SQLite: added here, never by SQL SUM (floats).
            charged = sum(
                (
                    Decimal(str(c))
                    for (c,) in connection.execute(
                        text(
                            "SELECT charge FROM usage_records "
                            "WHERE organization_id = :org AND charge IS NOT NULL"
                        ),
                        {"org": org},
                    )
                ),
                Decimal(0),
            )
            wallet, consumed, balance, granted, held, leased = connection.execute(
                text(
                    "SELECT id, consumed_total, balance, granted_total, held, leased "
                    "FROM billing_wallets WHERE organization_id = :org"
                ),
                {"org": org},
            ).one()
            consumed, balance, granted, held, leased = (
                Decimal(str(v)) for v in (consumed, balance, granted, held, leased)
            )
            open_holds = connection.execute(
                text(
                    "SELECT COUNT(*) FROM billing_reservations "
                    "WHERE wallet_id = :wallet AND closed_at IS NULL"
                ),
                {"wallet": wallet},
            ).scalar_one()
            open_leases = connection.execute(
                text(
                    "SELECT COUNT(*) FROM billing_credit_leases "
                    "WHERE wallet_id = :wallet AND closed_at IS NULL"
                ),
                {"wallet": wallet},
            ).scalar_one()
    finally:
        engine.dispose()
    exact = (
        charged == consumed
        and balance == granted - consumed
        and open_holds == 0
        and open_leases == 0
        and held == 0
        and leased == 0
    )
    verdict = "exact" if exact else "MISMATCH"
    say(
        f"prepaid wallet: charged {charged}, consumed {consumed}, {open_holds} open holds, "
        f"{open_leases} open leases: {verdict}"
    )
    return bool(exact)


RUNS = {
    "sqlite": (False, False),
    "sqlite-prepaid": (False, True),
    "postgres": (True, False),
    "postgres-prepaid": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("BENCH_SECONDS", 15)),
        help="seconds of load per point and target (split into the rounds)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="turns of the gateways measured side by side; each keeps its best (this "
        "machine's throughput wanders by 10-20 %% from one few-second window to the next)",
    )
    parser.add_argument(
        "--only",
        default=",".join(["litellm", *RUNS]),
        help="comma-separated targets to run (litellm, " + ", ".join(RUNS) + ")",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - {"litellm", *RUNS})
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    workdir = BENCH_HOME / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True)
    folder = workdir.relative_to(ROOT)
    say(f"work folder {folder}; {args.seconds:g} s a point, {args.workers} workers")
    results: dict[str, Points] = {}
    history: Rounds = {}
    exact: dict[str, bool] = {}
    with mock_upstream(workdir) as upstream:
        direct = Target("direct-upstream", upstream, {}, "mock")
        results.update(measure([direct], workdir, args.seconds))
        if "litellm" in chosen:
            with litellm(workdir, upstream, args.workers) as peer:
                results.update(measure([peer], workdir, args.seconds))
        for database in ("sqlite", "postgres"):
            # The unbilled and prepaid gateways of one database run side by side and take
            # turns, round by round: their ratio is not at the mercy of a noisy minute.
            names = [n for n in (database, f"{database}-prepaid") if n in chosen]
            if names:
                run_side_by_side(names, workdir, upstream, args, results, history, exact)
    report(results, history, exact)


def run_side_by_side(
    names: list[str],
    workdir: Path,
    upstream: str,
    args: argparse.Namespace,
    results: dict[str, Points],
    history: Rounds,
    exact: dict[str, bool],
) -> None:
    with contextlib.ExitStack() as databases:
        urls: dict[str, str | None] = {}
        for name in names:
            postgres, _ = RUNS[name]
            urls[name] = databases.enter_context(postgres_database()) if postgres else None
            if postgres and urls[name] is None:
                return
        with contextlib.ExitStack() as gateways:
            started: list[tuple[Target, str, bool]] = []
            for name in names:
                _, prepaid = RUNS[name]
                target, db_url = gateways.enter_context(
                    modelmint(workdir, upstream, args.workers, urls[name], prepaid)
                )
                started.append((target, db_url, prepaid))
            targets = [target for target, _, _ in started]
            results.update(measure(targets, workdir, args.seconds, args.rounds, history))
            for target, db_url, prepaid in started:
                exact[target.name] = check_metering(
                    target, db_url, workdir, results[target.name][64, False].rps
                )
                if prepaid:
                    say(f"{target.name}: {paths(target)}")
        # The gateways stopped and handed their leases back: the wallets must balance.
        for target, db_url, prepaid in started:
            if prepaid:
                exact[target.name] &= check_wallet(db_url)


def report(results: dict[str, Points], history: Rounds, exact: dict[str, bool]) -> None:
    print()
    columns = ("c", "stream", "req/s", "p50 ms", "p99 ms", "added p50")
    print(f"{'target':26} " + " ".join(f"{c:>10}" for c in columns))
    direct = results["direct-upstream"]
    for name, points in results.items():
        for (connections, stream), r in sorted(points.items()):
            added = r.p50_ms - direct[connections, stream].p50_ms
            cells = (connections, stream, f"{r.rps:.1f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}")
            print(f"{name:26} " + " ".join(f"{c!s:>10}" for c in (*cells, f"{added:.2f}")))
    print()
    peer = results.get("litellm")
    for name in (n for n in results if n.startswith("modelmint")):
        ours = results[name]
        tag = {
            "modelmint-sqlite": "gateway",
            "modelmint-sqlite-prepaid": "gateway_sqlite_prepaid",
            "modelmint-postgres": "gateway_postgres",
            "modelmint-postgres-prepaid": "gateway_postgres_prepaid",
        }[name]
        for stream in (False, True):
            suffix = "_stream" if stream else ""
            for connections in CONCURRENCY:
                if peer is not None:
                    ratio = ours[connections, stream].rps / max(peer[connections, stream].rps, 1e-9)
                    print(f"{tag}_c{connections}{suffix}_rps_ratio_vs_litellm: {ratio:.2f}")
            added = ours[1, stream].p50_ms - direct[1, stream].p50_ms
            print(f"{tag}_c1{suffix}_added_p50_ms: {added:.3f}")
        print(f"{tag}_metering_exact: {str(exact[name]).lower()}")
    # The price of billing: prepaid against unbilled on the same database, same run.
    for database in ("sqlite", "postgres"):
        unbilled = results.get(f"modelmint-{database}")
        prepaid = results.get(f"modelmint-{database}-prepaid")
        if unbilled is None or prepaid is None:
            continue
        ratio = prepaid[64, False].rps / max(unbilled[64, False].rps, 1e-9)
        paid_added = prepaid[1, False].p50_ms - direct[1, False].p50_ms
        free_added = unbilled[1, False].p50_ms - direct[1, False].p50_ms
        print(f"gateway_{database}_prepaid_c64_ratio_vs_unbilled: {ratio:.2f}")
        print(f"gateway_{database}_prepaid_c1_added_p50_ms: {paid_added:.3f}")
        print(f"gateway_{database}_unbilled_c1_added_p50_ms: {free_added:.3f}")
        print(f"gateway_{database}_prepaid_c1_added_p50_over_unbilled_ms: "
              f"{paid_added - free_added:.3f}")  # fmt: skip
        # The same two figures paired: each round's prepaid against the unbilled round
        # measured right beside it, the median over the rounds. A noisy spell then hits
        # both sides of a pair, where the best rounds above may come from different spells.
        paid_rounds = history[f"modelmint-{database}-prepaid"]
        free_rounds = history[f"modelmint-{database}"]
        ratios = [
            p.rps / max(u.rps, 1e-9)
            for p, u in zip(paid_rounds[64, False], free_rounds[64, False], strict=True)
        ]
        gaps = [
            p.p50_ms - u.p50_ms
            for p, u in zip(paid_rounds[1, False], free_rounds[1, False], strict=True)
        ]
        print(f"gateway_{database}_prepaid_c64_ratio_vs_unbilled_paired_median: "
              f"{statistics.median(ratios):.2f}")  # fmt: skip
        print(f"gateway_{database}_prepaid_c1_added_p50_over_unbilled_ms_paired_median: "
              f"{statistics.median(gaps):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
