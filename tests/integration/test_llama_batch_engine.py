"""BatchedLlamaBackend on the real SmolLM2-135M GGUF: batching must not change answers.

Run: .venv/bin/python -m pytest tests/integration/test_llama_batch_engine.py -s
(-s shows the throughput lines.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelmint.config import Settings
from modelmint.errors import ContextLengthExceeded, InvalidRequest, ServiceUnavailable
from modelmint.registry.catalog import DeploymentSpec
from modelmint.serving.artifacts import resolve_artifact
from modelmint.serving.backend import TextBackend
from modelmint.serving.factory import build_backend
from modelmint.serving.llama_batch_engine import BatchedLlamaBackend, EngineCharge
from modelmint.serving.llama_sequence import Job
from modelmint.serving.types import SamplingParams, StreamDelta, TextRequest, Usage
from tests.support.deployments import deployment_spec
from tests.support.llama import MODEL, PROMPTS, THREADS

pytestmark = pytest.mark.slow


def _backend(**kwargs: Any) -> Iterator[BatchedLlamaBackend]:
    # A deadline far beyond any test: these tests are about batching, not about waiting.
    kwargs.setdefault("queue_timeout_s", 600.0)
    backend = BatchedLlamaBackend(resolve_artifact(MODEL), n_threads=THREADS, **kwargs)
    # The engine thread posts to each request's own loop, so one backend serves the
    # per-test event loops of pytest-asyncio.
    asyncio.run(backend.start())
    yield backend
    asyncio.run(backend.close())


@pytest.fixture(scope="module")
def engine() -> Iterator[BatchedLlamaBackend]:
    # Flash attention is the default; FA=0 runs these tests without it.
    yield from _backend(slots=8, context_per_slot=512, flash_attn=os.environ.get("FA") != "0")


@pytest.fixture(scope="module")
def tiny() -> Iterator[BatchedLlamaBackend]:
    """One slot, one place in the queue: for admission and overflow behaviour."""
    yield from _backend(slots=1, context_per_slot=256, max_queued=1)


@pytest.fixture
def trio() -> Iterator[BatchedLlamaBackend]:
    """Three empty slots: for which slot a prompt decodes in."""
    yield from _backend(slots=3, context_per_slot=256)


@pytest.fixture(scope="module")
def vocab() -> Any:
    """An independent tokenizer (vocabulary only) to check input token counts."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    return LlamaModel(path_model=str(resolve_artifact(MODEL)), params=params, verbose=False)


def tokens(usage: Usage) -> tuple[int, int, bool]:
    """The metered counts; engine time differs between runs by nature."""
    return usage.input_tokens, usage.output_tokens, usage.estimated


def completion(prompt: str, max_tokens: int = 24, **sampling: Any) -> TextRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=7, **sampling)
    return TextRequest(kind="completion", sampling=params, prompt=prompt)


def chat(content: str, max_tokens: int = 24) -> TextRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=7)
    return TextRequest(
        kind="chat", sampling=params, messages=[{"role": "user", "content": content}]
    )


async def collect(stream: AsyncIterator[StreamDelta]) -> tuple[str, str | None]:
    text: list[str] = []
    finish: str | None = None
    async for delta in stream:
        choice = delta.choices[0]
        piece = choice["delta"].get("content") if "delta" in choice else choice["text"]
        text.append(piece or "")
        finish = choice.get("finish_reason") or finish
    return "".join(text), finish


def test_backend_implements_the_text_backend_protocol(engine: BatchedLlamaBackend) -> None:
    assert isinstance(engine, TextBackend)
    assert engine.context_window == 512


async def test_batched_greedy_output_matches_solo(engine: BatchedLlamaBackend) -> None:
    request = chat("Write one sentence about the sea.", max_tokens=32)
    solo = await engine.generate(request)
    others = [chat(q, max_tokens=32) for q in ("Name a fruit.", "What is 7 * 6?", "Say hi.")]
    batched, *rest = await asyncio.gather(*(engine.generate(r) for r in [request, *others]))
    assert batched.choices == solo.choices
    assert tokens(batched.usage) == tokens(solo.usage)
    assert batched.usage.engine_ms > 0 and solo.usage.engine_ms > 0
    assert all(
        g.choices[0]["message"]["content"] != solo.choices[0]["message"]["content"] for g in rest
    )


async def test_the_argmax_of_greedy_jobs_picks_what_llama_cpps_greedy_sampler_picks(
    engine: BatchedLlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy jobs skip the sampler chain for one numpy argmax per step; the tokens (and
    so the answers, batched with others or not) are the ones the sampler would pick."""
    requests = [chat(q, max_tokens=40) for q in ("Name three rivers.", "Why do cats purr?")]
    fast = await asyncio.gather(*(engine.generate(r) for r in requests))
    monkeypatch.setattr(Job, "greedy", property(lambda job: False))
    sampled = await asyncio.gather(*(engine.generate(r) for r in requests))
    assert [g.choices for g in fast] == [g.choices for g in sampled]
    assert [tokens(g.usage) for g in fast] == [tokens(g.usage) for g in sampled]


async def test_a_prompt_reuses_the_kept_cells_of_a_shared_start_and_answers_the_same(
    tiny: BatchedLlamaBackend,
) -> None:
    async def run(prompt: str) -> tuple[str, EngineCharge]:
        charge = EngineCharge()
        text, _ = await collect(tiny.stream(completion(prompt, 16), Usage(), charge))
        return text, charge

    question = "The three primary colors are red, blue and yellow. The sky is"
    await run("Zebras live in")  # the only slot now holds an unrelated prompt
    fresh, fresh_charge = await run(question)
    await run("The three primary colors are red, green")  # same start, other ending
    again, reused_charge = await run(question)

    assert fresh_charge.reused_tokens <= 1  # at most the BOS token is shared
    assert reused_charge.reused_tokens >= 6  # "The three primary colors are red,"
    assert again == fresh
    assert reused_charge.engine_ms < fresh_charge.engine_ms * 4  # charged, not free


async def _run_in(
    backend: BatchedLlamaBackend, prompt: str, max_tokens: int
) -> tuple[str, EngineCharge, int]:
    """(text, the engine's charge, prompt tokens)."""
    charge, usage = EngineCharge(), Usage()
    text, _ = await collect(backend.stream(completion(prompt, max_tokens), usage, charge))
    return text, charge, usage.input_tokens


QUESTION = "The three primary colors are red, blue and yellow. The sky is"


async def test_a_lone_request_reuses_a_start_where_it_is_kept(
    trio: BatchedLlamaBackend,
) -> None:
    """With nothing else decoding, slot packing does not matter: a request takes the slot
    that kept its start, and a new prompt the slot used longest ago, so the slots keep
    the last few distinct prompts."""
    (_, beside, _), (fresh, first, _) = await asyncio.gather(
        _run_in(trio, "Zebras live in", 40), _run_in(trio, QUESTION, 16)
    )
    assert (beside.slot, first.slot) == (0, 1)
    again, kept, prompt_tokens = await _run_in(trio, QUESTION, 16)
    other, spread, _ = await _run_in(trio, "Penguins eat", 8)

    assert kept.slot == 1  # where its cells are: no copy
    # All of it but the last token, which runs again for its logits.
    assert kept.reused_tokens == prompt_tokens - 1
    assert again == fresh
    assert spread.slot == 2 and other  # the slot used longest ago, not one holding a prompt


async def test_beside_a_live_sequence_a_kept_start_is_copied_into_the_lowest_free_slot(
    trio: BatchedLlamaBackend,
) -> None:
    """Live slots stay packed from 0 (llama.cpp computes only consecutive sequence ids
    together), and a longer kept start in a higher slot is copied down, not recomputed."""
    zebras = asyncio.create_task(_run_in(trio, "Zebras live in", 160))
    (_, filler, _), (fresh, first, _) = await asyncio.gather(
        _run_in(trio, "Penguins eat", 40),
        _run_in(trio, QUESTION, 16),  # the question ends first
    )
    assert (filler.slot, first.slot) == (1, 2)
    again, copied, prompt_tokens = await _run_in(trio, QUESTION, 16)  # zebras still run
    (_, zebra, _) = await zebras

    assert zebra.slot == 0 and zebra.steps > copied.steps  # it was live all along
    assert copied.slot == 1  # the lowest free slot, its start copied in from slot 2
    assert copied.reused_tokens == prompt_tokens - 1
    assert again == fresh


async def test_a_sequence_moves_down_into_a_slot_freed_below_it(
    trio: BatchedLlamaBackend,
) -> None:
    (_, low, _), (_, short, _), (moved_text, moved, _) = await asyncio.gather(
        _run_in(trio, "Zebras live in", 40),
        _run_in(trio, "The capital of France is", 2),
        _run_in(trio, QUESTION, 24),
    )
    assert (low.slot, short.slot) == (0, 1)
    assert moved.slot == 1  # it began in slot 2 and moved when slot 1 was freed
    alone, _, _ = await _run_in(trio, QUESTION, 24)
    assert moved_text == alone


async def test_a_move_keeps_the_prompt_kept_where_the_sequence_moved_to(
    trio: BatchedLlamaBackend,
) -> None:
    """Filling a gap swaps the two slots' cells by way of the spare stream: the prompt the
    freed slot kept is still kept, now in the slot the sequence moved from, and a later
    request with that prompt computes only its last token."""
    visited = "The capital of France is a city that many people visit every year, and it is"
    (_, low, _), (short_text, short, _), (_, moved, _) = await asyncio.gather(
        _run_in(trio, "Zebras live in", 40),
        _run_in(trio, visited, 2),
        _run_in(trio, QUESTION, 24),
    )
    assert (low.slot, short.slot, moved.slot) == (0, 1, 1)
    again, kept, prompt_tokens = await _run_in(trio, visited, 2)

    assert kept.slot == 2  # where the swap put its cells
    assert kept.reused_tokens == prompt_tokens - 1
    assert again == short_text


async def test_seeded_sampling_is_the_same_alone_and_in_a_batch(
    engine: BatchedLlamaBackend,
) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=1234)
    request = TextRequest(kind="completion", sampling=params, prompt="A poem about autumn:")
    solo = await engine.generate(request)
    batched, _ = await asyncio.gather(
        engine.generate(request), engine.generate(completion("Dogs are", 24))
    )
    assert batched.choices == solo.choices


def opening(text: str) -> str:
    """A continuation's first words: distinct for every prompt here."""
    return " ".join(text.split()[:4])


async def test_ten_concurrent_streams_each_receive_only_their_own_tokens(
    engine: BatchedLlamaBackend, vocab: Any
) -> None:
    """Each stream gets its own sequence's tokens and is metered for them.

    Its text is compared with its solo run's opening words, not whole: llama.cpp's CPU
    kernels are not batch-invariant everywhere. On an AVX-512 machine one of these ten,
    run batched after the module's other tests, left its solo answer after 19 words at
    a near tie. Equal answers are the subject of the batched-vs-solo tests above.
    """
    requests = [completion(p, max_tokens=16 + 2 * i) for i, p in enumerate(PROMPTS)]
    solo = []
    for request in requests:
        usage = Usage()
        solo.append((await collect(engine.stream(request, usage)), usage))
    openings = [opening(text) for (text, _), _ in solo]
    assert len(set(openings)) == len(openings), "prompts must lead to different openings"

    usages = [Usage() for _ in requests]
    charges = [EngineCharge() for _ in requests]
    # 10 requests on 8 slots: two wait in the queue and join between steps.
    results = await asyncio.gather(
        *(
            collect(engine.stream(r, u, c))
            for r, u, c in zip(requests, usages, charges, strict=True)
        )
    )
    for request, (text, finish), usage, charge, want in zip(
        requests, results, usages, charges, openings, strict=True
    ):
        assert opening(text) == want
        assert usage.input_tokens == len(
            vocab.tokenize(request.prompt.encode(), add_bos=True, special=False)
        )
        assert not usage.estimated
        assert request.sampling.max_tokens is not None
        if finish == "length":
            assert usage.output_tokens == request.sampling.max_tokens
        else:
            assert finish == "stop" and 0 < usage.output_tokens < request.sampling.max_tokens
        # One step for the prompt, then one per generated token but the last.
        assert charge.steps == usage.output_tokens
        assert charge.engine_ms > 0


async def test_queue_overflow_is_refused_and_a_closed_stream_frees_its_slot(
    tiny: BatchedLlamaBackend,
) -> None:
    holder_usage, holder_charge = Usage(), EngineCharge()
    holder = tiny.stream(completion("Count: 1, 2, 3,", max_tokens=200), holder_usage, holder_charge)
    await anext(holder)  # the only slot is taken and generating
    queued = tiny.stream(completion("The sun is", max_tokens=8), Usage())
    waiting = asyncio.ensure_future(collect(queued))
    await asyncio.sleep(0.05)  # it is in the queue, the queue is full
    assert not waiting.done()

    with pytest.raises(ServiceUnavailable) as refused:
        await anext(tiny.stream(completion("One more", max_tokens=8), Usage()))
    assert refused.value.retry_after is not None and refused.value.status_code == 503

    await holder.aclose()  # the consumer goes away: its slot frees at the next step
    text, finish = await asyncio.wait_for(waiting, timeout=20)
    assert text and finish in ("length", "stop")
    assert 1 <= holder_usage.output_tokens < 200
    assert holder_charge.steps < 200


async def test_context_overflow_and_unsupported_fields_are_refused_before_any_work(
    tiny: BatchedLlamaBackend,
) -> None:
    long_prompt = "word " * 400  # beyond the 256-token slot
    with pytest.raises(ContextLengthExceeded) as too_long:
        await tiny.generate(completion(long_prompt, max_tokens=8))
    assert too_long.value.param == "messages"
    with pytest.raises(ContextLengthExceeded) as too_many:
        await tiny.generate(completion("Hello", max_tokens=300))
    assert too_many.value.param == "max_tokens"
    tools = TextRequest(
        kind="completion",
        sampling=SamplingParams(max_tokens=4),
        prompt="x",
        extra={"tools": [{"type": "function"}]},
    )
    with pytest.raises(InvalidRequest):
        await tiny.generate(tools)


async def test_stop_strings_and_max_tokens_zero_keep_the_old_behaviour(
    engine: BatchedLlamaBackend,
) -> None:
    full = await engine.generate(completion("1, 2, 3, 4,", max_tokens=16))
    text = full.choices[0]["text"]
    stop = text.strip().split(",")[1]  # a piece that appears in the greedy text
    cut = await engine.generate(completion("1, 2, 3, 4,", max_tokens=16, stop=(stop,)))
    assert cut.choices[0]["finish_reason"] == "stop"
    assert cut.choices[0]["text"] == text[: text.index(stop)]
    nothing = await engine.generate(completion("Hello", max_tokens=0))
    assert nothing.choices[0]["text"] == "" and nothing.usage.output_tokens == 0


def test_a_deployment_turns_flash_attention_off_or_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, llm_threads=1)

    def spec(config: dict[str, object]) -> DeploymentSpec:
        return deployment_spec(
            "llama_cpp", MODEL, name="smollm2", task="chat", format="gguf", config=config
        )

    default = build_backend(spec({}), settings)
    assert isinstance(default, BatchedLlamaBackend) and default.flash_attn
    off = build_backend(spec({"flash_attn": False}), settings)
    assert isinstance(off, BatchedLlamaBackend) and not off.flash_attn
    with pytest.raises(InvalidRequest, match="flash_attn"):
        build_backend(spec({"flash_attn": "yes"}), settings)
    with pytest.raises(InvalidRequest, match="batched engine only"):
        build_backend(spec({"engine": "single", "flash_attn": False}), settings)
