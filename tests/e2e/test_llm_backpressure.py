"""Backpressure of the local LLM through the real gateway: a full queue answers 503,
a client that leaves frees its slot for the next request, a request that waits past
its deadline answers 504, and every case leaves exactly one correct usage record.

The server runs one slot with room for one queued request, so each state is reached
deterministically; the queue depth is read from /metrics, never guessed with sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.support.processes import Server, cli_json

pytestmark = pytest.mark.slow

CHAT_MODEL = "smollm2-135m-instruct"
# A long, list-like answer: greedy SmolLM2 runs it past 800 tokens. ("Count from 1
# to 400" stops after 121, too soon to outlast a queue deadline.)
LONG_PROMPT = "List the numbers from 1 to 1000 separated by commas."


@dataclass
class Backpressure:
    server: Server
    key: str

    def usage_row(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The request's usage row, waiting for the writer's next commit."""
        engine = create_engine(f"sqlite:///{self.server.home / 'modelmint.db'}")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with engine.connect() as connection:
                    row = (
                        connection.execute(
                            text("SELECT * FROM usage_records WHERE id = :id"), {"id": request_id}
                        )
                        .mappings()
                        .first()
                    )
                if row is not None:
                    return dict(row)
                time.sleep(0.05)
        finally:
            engine.dispose()
        raise AssertionError(f"no usage record for {request_id}")

    def usage_count(self, request_id: str) -> int:
        engine = create_engine(f"sqlite:///{self.server.home / 'modelmint.db'}")
        try:
            with engine.connect() as connection:
                return int(
                    connection.execute(
                        text("SELECT count(*) FROM usage_records WHERE id = :id"),
                        {"id": request_id},
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    def queue_depth(self) -> float:
        metrics = httpx.get(self.server.url + "/metrics", timeout=5).text
        for line in metrics.splitlines():
            if line.startswith("modelmint_llm_queue_depth{") and CHAT_MODEL in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait_for_queue(self, depth: float, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue_depth() == depth:
                return
            time.sleep(0.02)
        raise AssertionError(f"queue depth never reached {depth}")


@dataclass
class Stream:
    """A streamed chat request read on its own thread, which can hang up on demand."""

    live: Backpressure
    max_tokens: int = 300
    status: int | None = None
    request_id: str = ""
    chunks: int = 0
    text: str = ""
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    first_token: threading.Event = field(default_factory=threading.Event)
    hang_up: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                self.live.server.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {self.live.key}"},
                json={
                    "model": CHAT_MODEL,
                    "messages": [{"role": "user", "content": LONG_PROMPT}],
                    "max_tokens": self.max_tokens,
                    "temperature": 0,
                    "stream": True,
                },
                timeout=60,
            ) as response:
                self.status = response.status_code
                self.request_id = response.headers["x-request-id"]
                self.headers = dict(response.headers)
                if response.status_code != 200:
                    self.error = httpx.Response(200, content=response.read()).json()["error"]
                    return
                for line in response.iter_lines():
                    if '"content":"' in line and '"content":""' not in line:
                        self.chunks += 1
                        self.first_token.set()
                    if self.hang_up.is_set():
                        return  # leaving the block closes the connection mid-stream
        finally:
            self.first_token.set()
            self.done.set()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backpressure]:
    home: Path = tmp_path_factory.mktemp("backpressure-home")
    server = Server(
        home=home,
        extra_env={
            "MODELMINT_LLM_SLOTS": "1",
            "MODELMINT_LLM_MAX_QUEUED": "1",
            # Long enough that a request queued behind a stream about to be hung up
            # gets the slot on a loaded machine; short enough that one behind a
            # 600-token stream (6 s or more here) passes its deadline.
            "MODELMINT_LLM_QUEUE_TIMEOUT_S": "2.5",
        },
    )
    server.start()
    try:
        created = cli_json(
            server.env, "keys", "create", "--org", "bp-org", "--create-org", "--name", "main"
        )
        yield Backpressure(server, created["key"])
    finally:
        server.stop()


def test_full_queue_answers_503_with_retry_after_and_records_it(live: Backpressure) -> None:
    running = Stream(live).start()
    assert running.first_token.wait(30) and running.status == 200
    waiting = Stream(live, max_tokens=5).start()
    live.wait_for_queue(1)
    refused = Stream(live).start()
    assert refused.done.wait(30)
    running.hang_up.set()
    assert refused.status == 503 and refused.error is not None
    assert float(refused.headers["retry-after"]) > 0
    row = live.usage_row(refused.request_id)
    assert row["status_code"] == 503 and row["output_tokens"] == 0
    assert waiting.done.wait(30) and waiting.status == 200
    assert live.usage_count(refused.request_id) == 1


def test_a_client_that_leaves_frees_its_slot_for_the_next_request(live: Backpressure) -> None:
    leaving = Stream(live).start()
    assert leaving.first_token.wait(30) and leaving.status == 200
    queued = Stream(live, max_tokens=8).start()
    live.wait_for_queue(1)
    leaving.hang_up.set()
    # The queued request only gets the single slot if the departed stream gave it back.
    assert queued.done.wait(30)
    assert queued.status == 200 and queued.chunks > 0
    left = live.usage_row(leaving.request_id)
    assert left["finish_reason"] == "cancelled"
    assert leaving.chunks <= left["output_tokens"] < 300
    served = live.usage_row(queued.request_id)
    assert served["status_code"] == 200 and 0 < served["output_tokens"] <= 8
    assert served["input_tokens"] > 0


def test_a_request_past_its_queue_deadline_answers_504(live: Backpressure) -> None:
    running = Stream(live, max_tokens=600).start()
    assert running.first_token.wait(30) and running.status == 200
    late = Stream(live, max_tokens=5).start()
    assert late.done.wait(30)
    still_running = not running.done.is_set()
    running.hang_up.set()
    assert still_running, "the first request ended before the deadline; the test proves nothing"
    assert late.status == 504 and late.error is not None
    assert late.error["code"] == "queue_timeout"
    row = live.usage_row(late.request_id)
    assert row["status_code"] == 504 and row["input_tokens"] == 0 and row["output_tokens"] == 0
    assert live.usage_count(late.request_id) == 1
