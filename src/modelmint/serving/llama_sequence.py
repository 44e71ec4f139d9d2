"""One sequence the batching engine decodes (a ``Job``), its sampler chain, and its charge.

A job is built on the event loop with the request's settings and handed to the engine
thread, which alone writes its decoding state (slot, position, next token, sampler)
once it holds a slot. ``EngineCharge`` is what the request cost the engine, read by the
event loop after the stream has closed.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as lc

from modelmint.errors import BackendError
from modelmint.serving.text_stream import StopMatcher
from modelmint.serving.types import SamplingParams

__all__ = ["EngineCharge", "Job", "by_seq", "sampler_for"]

# How many generated tokens the frequency/presence penalties look back on (llama-cpp-python's
# default ``last_n_tokens_size``, so penalised output matches the one-at-a-time backend).
_PENALTY_LAST_N = 64


@dataclass(slots=True)
class EngineCharge:
    """What one request cost the engine; final once its stream has closed.

    Written by the engine thread only; read it after the stream ends.
    """

    # Share of the wall time of every step the request took part in, in proportion to
    # the tokens it put into that step's batch (prompt chunk or one generated token).
    engine_ms: float = 0.0
    # Time from arrival to the step that first processed its prompt.
    queue_ms: float = 0.0
    # Decode steps the request took part in.
    steps: int = 0
    # Prompt tokens found in the slot's KV cells, kept from an earlier prompt.
    reused_tokens: int = 0
    # The KV slot (llama.cpp sequence id) the request decodes in, last if it was moved
    # down into a freed one; -1 before it had one.
    slot: int = -1


@dataclass(eq=False, slots=True)
class Job:
    tokens: list[int]
    max_tokens: int
    sampling: SamplingParams
    penalties: tuple[float, float]  # (frequency, presence)
    grammar: str | None  # GBNF the answer must follow (response_format), or None
    logprobs: int  # alternatives per token with the logprobs asked for; -1: none asked
    queue: asyncio.Queue[tuple[str, Any]]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]
    charge: EngineCharge
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.perf_counter)
    # Engine-thread state once the job holds a slot.
    seq: int = -1
    n_past: int = 0  # tokens of this sequence already in the KV cache
    next_token: int = -1  # sampled, not yet decoded
    produced: int = 0
    sampler: Any = None
    matcher: StopMatcher | None = None
    entry: dict[str, Any] | None = None  # the logprobs of the token sampled last
    out_idx: int = -1  # index in the current batch whose logits belong to this job
    batch_tokens: int = 0  # tokens this job put into the current batch

    @property
    def greedy(self) -> bool:
        """Whether its next token is the argmax of its logits, whatever came before:
        temperature 0, no penalties, no grammar (its sampler chain is greedy alone)."""
        return self.sampling.temperature <= 0.0 and self.grammar is None and not any(self.penalties)


def by_seq(job: Job) -> int:
    """Sort key: the job's slot, the order llama.cpp wants sequences in a batch."""
    return job.seq


def sampler_for(job: Job, vocab: Any) -> Any:
    """The request's own sampler chain: its penalties, its grammar (only tokens that keep
    the answer valid remain), then greedy at temperature 0, else top-p, temperature, seed."""
    sampling = job.sampling
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    frequency, presence = job.penalties
    if frequency or presence:
        lc.llama_sampler_chain_add(
            chain, lc.llama_sampler_init_penalties(_PENALTY_LAST_N, 1.0, frequency, presence)
        )
    if job.grammar is not None:
        grammar = lc.llama_sampler_init_grammar(vocab, job.grammar.encode(), b"root")
        if not grammar:
            lc.llama_sampler_free(chain)
            raise BackendError("the answer's grammar (response_format) could not be loaded")
        lc.llama_sampler_chain_add(chain, grammar)
    if sampling.temperature <= 0.0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
    else:
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(31)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
