"""What every benchmark needs: free ports, child processes, peers' venvs, wrk runs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH_HOME = ROOT / "var" / "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def say(message: str) -> None:
    print(f"# {message}", flush=True)


@contextmanager
def process(
    args: list[str], *, env: dict[str, str] | None = None, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, logging to ``log``, terminated (then killed) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # stdin from /dev/null: llama-server reads its terminal and stops when it cannot.
        child = subprocess.Popen(
            args,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        try:
            yield child
        finally:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def wait_until_ready(
    url: str,
    child: subprocess.Popen[bytes],
    *,
    timeout: float = 180,
    headers: dict[str, str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"{' '.join(map(str, child.args))} exited with {child.returncode}")  # type: ignore[arg-type]
        try:
            if httpx.get(url, timeout=2, headers=headers).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout}s")


def peer_venv(name: str, requirement: str, *, find_links: Path | None = None) -> Path:
    """A virtual environment of its own for a peer, created and installed once.

    ``find_links``: a folder of wheels pip takes before anything from the index (the
    llama-cpp-python wheel built for this CPU, so the peer runs the same llama.cpp build
    as ModelMint)."""
    venv = BENCH_HOME / f"venv-{name}"
    stamp = venv / ".installed"
    wanted = f"{requirement} {find_links or ''}".strip()
    if not stamp.exists() or stamp.read_text() != wanted:
        say(f"installing {requirement} into {venv.relative_to(ROOT)} (once)")
        if venv.exists():
            shutil.rmtree(venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        links = ["--find-links", str(find_links)] if find_links else []
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", *links, requirement], check=True
        )
        stamp.write_text(wanted)
    return venv


def llama_wheels() -> Path:
    """The folder of the llama-cpp-python wheel built for this CPU (see scripts/llama-wheel.sh)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "llama-wheel.sh"), sys.executable],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    extra: dict[str, str]


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


def wrk(url: str, script: str, *, connections: int, seconds: float, workdir: Path) -> WrkResult:
    """Run wrk with a Lua ``script``; parse throughput, latency percentiles and any
    ``BENCH_<NAME> <value>`` lines the script prints from ``done()``."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    lua = workdir / f"wrk-{abs(hash(script))}.lua"
    lua.write_text(script)
    threads = min(2, connections)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
         "--latency", "--timeout", "10s", "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non2xx[1]) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    extra = dict(re.findall(r"^BENCH_(\w+) (\S+)$", out, re.M))
    return WrkResult(rps, p50, p99, requests, errors, extra)


def lua_post(path: str, body: str, headers: dict[str, str]) -> str:
    """A wrk script posting ``body`` to ``path``."""
    lines = ['wrk.method = "POST"', f"wrk.path = {_lua_str(path)}", f"wrk.body = {_lua_str(body)}"]
    lines += [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def lua_exact_count(
    path: str, body: str, headers: dict[str, str], per_thread: int, filler: str
) -> str:
    """A wrk script that sends exactly ``per_thread`` POSTs per thread, then only GETs of
    ``filler`` (an unmetered path) until every POST has been answered, then stops.

    It prints ``BENCH_OK <n>``: the 2xx answers to the POSTs, each fully received, and
    ``BENCH_SENT``/``BENCH_ANSWERED`` for the record. A POST is told from a filler GET by
    its answer's body: fillers answer ``{"status":"ok"}``."""
    post = f"wrk.format('POST', {_lua_str(path)}, hdrs, {_lua_str(body)})"
    return f"""
hdrs = {{{", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items())}}}
sent, answered, ok = 0, 0, 0
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function request()
  if sent < {per_thread} then
    sent = sent + 1
    return {post}
  end
  return wrk.format('GET', {_lua_str(filler)})
end
function response(status, headers, body)
  if status == 200 and string.find(body, '"status":"ok"', 1, true) then return end
  answered = answered + 1
  if status >= 200 and status < 300 then ok = ok + 1 end
  if answered >= {per_thread} then wrk.thread:stop() end
end
function done(summary, latency, requests)
  local s, a, o = 0, 0, 0
  for _, t in ipairs(threads) do
    s, a, o = s + t:get("sent"), a + t:get("answered"), o + t:get("ok")
  end
  io.write(string.format("BENCH_OK %d\\nBENCH_SENT %d\\nBENCH_ANSWERED %d\\n", o, s, a))
end
"""


def _lua_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
