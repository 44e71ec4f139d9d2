"""Soak test: a gateway under steady load for minutes, watched for errors, latency drift, leaks.

Starts the mock OpenAI upstream and a `modelmint up` gateway (SQLite, one worker) as
separate processes, measures the highest request rate the gateway sustains, then sends
chat requests (every fourth streamed) at a fixed fraction of it for the whole duration
and reports, per tenth of the run, the p50/p99 latency and the gateway's memory:

    python -m bench.soak                       # 10 minutes at 80% of the measured maximum
    python -m bench.soak --seconds 60          # a short run
    python -m bench.soak --prepaid             # prepaid mode (below)

Prepaid mode puts the client on a prepaid plan with every token and request priced,
on PostgreSQL with two workers, at 70% of the prepaid maximum measured in the same
run: every request is admitted against the wallet and charged by the writer. At the
end the wallet and the usage rows must reconcile exactly (consumed == sum of the
charges, nothing left held or leased once the gateway stopped), and the last
tenth's p99 must stay within 2x of the first tenth's.

Latency is measured from when a request was due, not when it was sent (an open-loop
schedule), so a gateway that falls behind shows it instead of slowing the load down.
Exit status 1 when any request failed, the memory grew by 10% or more, or (prepaid
mode) the books did not reconcile or the p99 drifted past 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psutil
from rich.console import Console
from rich.table import Table

from bench.common import BENCH_HOME, say
from bench.gateway import (
    Target,
    chat_body,
    check_wallet,
    mock_upstream,
    modelmint,
    postgres_database,
    reset,
)

__all__ = ["SoakResult", "main"]

WINDOWS = 10  # the run is reported in tenths
MAX_RSS_GROWTH = 0.10
MAX_P99_DRIFT = 1.0  # prepaid mode: the last tenth's p99 within 2x of the first's
# Connections to the gateway, as a load balancer would hold: when the gateway falls
# behind, requests wait here (and their latency shows it), not as a backlog inside the
# gateway that would pass for a memory leak.
CONNECTIONS = 64


@dataclass
class SoakResult:
    max_rps: float
    target_rps: float
    sent: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    # Per window: latencies (seconds) of successful requests, and RSS samples (bytes).
    latencies: list[list[float]] = field(default_factory=lambda: [[] for _ in range(WINDOWS)])
    rss: list[list[int]] = field(default_factory=lambda: [[] for _ in range(WINDOWS)])
    # Seconds from the start to the last answer: more than the duration when the gateway
    # fell behind and the queued requests drained after the schedule ended.
    drained_s: float = 0.0

    def p(self, window: int, q: float) -> float:
        values = sorted(self.latencies[window])
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    def rss_mb(self, window: int) -> float:
        return statistics.median(self.rss[window]) / 2**20 if self.rss[window] else float("nan")

    @property
    def answered(self) -> int:
        return sum(len(w) for w in self.latencies)

    @property
    def p99_drift(self) -> float:
        return self.p(WINDOWS - 1, 0.99) / self.p(0, 0.99) - 1

    @property
    def rss_growth(self) -> float:
        return self.rss_mb(WINDOWS - 1) / self.rss_mb(0) - 1


def gateway_process() -> psutil.Process:
    """The `modelmint up` child of this process (the gateway whose memory is watched)."""
    for child in psutil.Process().children(recursive=True):
        if "modelmint" in child.cmdline() and "up" in child.cmdline():
            return child
    raise RuntimeError("no gateway process found")


def rss_of(process: psutil.Process) -> int:
    """Resident memory of the gateway and any worker processes it started."""
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        total += child.memory_info().rss
    return int(total)


async def _one(session: aiohttp.ClientSession, target: Target, stream: bool) -> str | None:
    """Send one chat request; None if it succeeded in full, else what went wrong."""
    async with session.post(
        target.base + "/chat/completions",
        data=chat_body(target.model, stream),
        headers={**target.headers, "Content-Type": "application/json"},
    ) as response:
        body = await response.read()
        if response.status != 200:
            return f"status {response.status}"
        complete = body.rstrip().endswith(b"[DONE]") if stream else b'"usage"' in body
        return None if complete else "incomplete body"


async def probe(target: Target, seconds: float, concurrency: int) -> float:
    """The highest rate the gateway sustains with ``concurrency`` requests in flight."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < stop:
            if await _one(session, target, stream=False) is None:
                done += 1

    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def soak(target: Target, result: SoakResult, seconds: float) -> None:
    """Requests due at a fixed rate for ``seconds``; RSS sampled every second."""
    gateway = gateway_process()
    started = time.monotonic()
    interval = 1 / result.target_rps
    pending: set[asyncio.Task[None]] = set()

    def window_of(at: float) -> int:
        return min(WINDOWS - 1, int((at - started) / seconds * WINDOWS))

    async def timed(session: aiohttp.ClientSession, due: float, stream: bool) -> None:
        try:
            problem = await _one(session, target, stream)
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = type(exc).__name__
        result.drained_s = max(result.drained_s, time.monotonic() - started)
        if problem is None:
            result.latencies[window_of(due)].append(time.monotonic() - due)
        else:
            result.errors += 1
            result.error_kinds[problem] = result.error_kinds.get(problem, 0) + 1

    async def watch_memory() -> None:
        while (now := time.monotonic()) < started + seconds:
            result.rss[window_of(now)].append(rss_of(gateway))
            await asyncio.sleep(1.0)

    limits = aiohttp.TCPConnector(limit=CONNECTIONS)
    # No total timeout: waiting for one of the connections is the gateway falling behind,
    # which the latency shows; only a silent socket is an error.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
    async with aiohttp.ClientSession(connector=limits, timeout=timeout) as session:
        watcher = asyncio.create_task(watch_memory())
        while (due := started + result.sent * interval) < started + seconds:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(timed(session, due, stream=result.sent % 4 == 3))
            pending.add(task)
            task.add_done_callback(pending.discard)
            result.sent += 1
        await asyncio.gather(*pending)
        await watcher


def report(result: SoakResult, seconds: float) -> None:
    table = Table(title=f"Soak: {seconds:.0f} s at {result.target_rps:.0f} req/s")
    for column in ("window", "requests", "p50 ms", "p99 ms", "gateway RSS MB"):
        table.add_column(column, justify="right")
    for w in range(WINDOWS):
        table.add_row(
            f"{w + 1}/{WINDOWS}",
            str(len(result.latencies[w])),
            f"{result.p(w, 0.5):.1f}",
            f"{result.p(w, 0.99):.1f}",
            f"{result.rss_mb(w):.1f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"max rate {result.max_rps:.0f} req/s; sent {result.sent}, answered "
        f"{result.answered} in {result.drained_s:.0f} s "
        f"({result.answered / result.drained_s:.0f} req/s); errors {result.errors} "
        f"{result.error_kinds or ''}; p99 drift {result.p99_drift:+.1%} (first to last tenth); "
        f"RSS growth {result.rss_growth:+.1%} (target < {MAX_RSS_GROWTH:.0%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="soak duration")
    parser.add_argument(
        "--fraction", type=float, help="of the measured maximum (default 0.8; prepaid 0.7)"
    )
    parser.add_argument("--probe-seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32, help="while probing the maximum")
    parser.add_argument("--prepaid", action="store_true", help="PostgreSQL, 2 workers, prepaid")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    fraction = args.fraction or (0.7 if args.prepaid else 0.8)
    # A fresh home per run: the gateway's database and the model registered in it.
    workdir = BENCH_HOME / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    reconciled: bool | None = None
    with mock_upstream(workdir) as upstream, postgres_database() as pg_url:
        if args.prepaid and pg_url is None:
            sys.exit("prepaid mode needs PostgreSQL")
        if args.prepaid:
            reset(pg_url)
        workers, url = (2, pg_url) if args.prepaid else (1, None)
        with modelmint(workdir, upstream, workers, url, args.prepaid) as (target, db_url):
            say(f"probing the maximum rate for {args.probe_seconds:.0f} s")
            max_rps = asyncio.run(probe(target, args.probe_seconds, args.concurrency))
            result = SoakResult(max_rps=max_rps, target_rps=max_rps * fraction)
            say(f"max {max_rps:.0f} req/s; soaking at {result.target_rps:.0f} req/s")
            asyncio.run(soak(target, result, args.seconds))
        if args.prepaid:  # the gateway stopped and handed its leases back
            reconciled = check_wallet(db_url)
    report(result, args.seconds)
    if args.json:
        figures = {
            "mode": "prepaid, PostgreSQL, 2 workers" if args.prepaid else "unbilled, SQLite",
            "seconds": args.seconds,
            "max_rps": round(max_rps, 1),
            "target_rps": round(result.target_rps, 1),
            "sent": result.sent,
            "answered": result.answered,
            "drained_s": round(result.drained_s, 1),
            "answered_rps": round(result.answered / result.drained_s, 1),
            "errors": result.errors,
            "p99_first_ms": round(result.p(0, 0.99), 2),
            "p99_last_ms": round(result.p(WINDOWS - 1, 0.99), 2),
            "p99_drift": round(result.p99_drift, 4),
            "rss_first_mb": round(result.rss_mb(0), 1),
            "rss_last_mb": round(result.rss_mb(WINDOWS - 1), 1),
            "rss_growth": round(result.rss_growth, 4),
            "books_reconciled": reconciled,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    failed = result.errors or result.rss_growth >= MAX_RSS_GROWTH
    if args.prepaid:
        failed = failed or not reconciled or result.p99_drift > MAX_P99_DRIFT
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
