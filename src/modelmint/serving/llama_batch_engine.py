"""Local LLM backend with continuous batching: concurrent requests share each llama.cpp step.

One engine thread owns the model and one llama.cpp context with ``slots`` sequences,
each with ``context_per_slot`` KV cells of its own (non-unified KV), and one spare KV
stream of the same size that moves between slots swap cells through (``llama_slots``).
Every step builds one ``llama_batch``: the next token of each generating sequence,
then prompt chunks of newly admitted sequences up to ``n_batch`` tokens, and runs one
``llama_decode``. Requests join between steps and leave as soon as they finish or
their consumer goes away; each sequence samples with its own sampler chain and
streams only its own tokens to its own asyncio queue. A freed slot keeps its
prompt's KV cells, and a new prompt goes to the free slot sharing its longest
prefix (the chat template and system prompt), computing only the rest.

The step's wall time is split among the requests in it in proportion to the tokens
each one put into the batch; ``EngineCharge.engine_ms`` is that share, summed.

This module is the backend and its step loop; one sequence's state and sampler chain
are in ``llama_sequence``, the slots' kept prompts and placement in ``llama_slots``, and
the events back to the event loops in ``llama_outbox``.

    backend = BatchedLlamaBackend(path, n_threads=2, slots=4)
    await backend.start()
    charge = EngineCharge()
    async for delta in backend.stream(request, usage, charge): ...
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import llama_cpp as lc
import numpy as np

from modelmint.errors import BackendError, ServiceUnavailable, UpstreamTimeout
from modelmint.observability.metrics import (
    LLM_BATCH_SEQUENCES,
    LLM_BUSY_SECONDS,
    LLM_DROPPED,
    LLM_QUEUE_DEPTH,
    LLM_SLOTS,
    LLM_SLOTS_BUSY,
    LLM_TOKENS,
)
from modelmint.serving import logprobs
from modelmint.serving.chat_template import ChatTemplate
from modelmint.serving.llama_outbox import Outbox, resolve
from modelmint.serving.llama_requests import (
    choice_count,
    collect,
    deltas,
    merged,
    output_grammar,
    prompt_tokens,
)
from modelmint.serving.llama_sequence import EngineCharge, Job, by_seq, sampler_for
from modelmint.serving.llama_slots import KvSlots

# The request-field refusals and the chunk shape are the old backend's, shared on purpose.
from modelmint.serving.text_stream import StopMatcher
from modelmint.serving.tool_call_stream import answer_shape
from modelmint.serving.types import Generation, SamplingParams, StreamDelta, TextRequest, Usage

__all__ = ["BatchedLlamaBackend", "EngineCharge"]

# After a step, how long the engine waits at most for the event loop to send the step's
# tokens before computing the next one (``Outbox.flush``): the loop's work for a step
# of 8 streams is about 0.7 ms; a loop busy with something else costs a step no more.
_HANDOFF_S = 0.002


class BatchedLlamaBackend:
    """A ``TextBackend`` serving a GGUF model with continuous batching on the CPU."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_threads: int,
        slots: int = 4,
        context_per_slot: int = 2048,
        max_queued: int = 64,
        n_batch: int = 512,
        # Flash attention: measured on a 2-vCPU Zen 3, SmolLM2-135M Q4_1, 8 streams of 64
        # tokens in process, 164-167 tok/s without it and 185-195 with it; one stream the
        # same (105 vs 106). Greedy output stays the same batched and solo either way.
        flash_attn: bool = True,
        queue_timeout_s: float = 30.0,
        model: str = "",
        deployment: str = "",
    ) -> None:
        if slots < 1 or context_per_slot < 16 or max_queued < 0 or n_batch < slots:
            raise ValueError("slots >= 1, context_per_slot >= 16, n_batch >= slots required")
        if queue_timeout_s <= 0:
            raise ValueError("queue_timeout_s must be positive")
        # A request still without a slot after this long gets 504: its client has
        # probably given up, and the queue must not grow stale work.
        self._queue_timeout_s = queue_timeout_s
        self._queue_depth = LLM_QUEUE_DEPTH.labels(model, deployment)
        self._slots_busy = LLM_SLOTS_BUSY.labels(model, deployment)
        self._slot_count = LLM_SLOTS.labels(model, deployment)
        self._batch_sequences = LLM_BATCH_SEQUENCES.labels(model, deployment)
        self._prompt_tokens = LLM_TOKENS.labels(model, deployment, "prompt")
        self._generated_tokens = LLM_TOKENS.labels(model, deployment, "generated")
        self._busy = LLM_BUSY_SECONDS.labels(model, deployment)
        self._dropped = {
            reason: LLM_DROPPED.labels(model, deployment, reason)
            for reason in ("queue_full", "timeout")
        }
        self._path = model_path
        self._n_threads = n_threads
        self._slots = slots
        self._context_per_slot = context_per_slot
        self._max_queued = max_queued
        self._n_batch = n_batch
        self._flash_attn = flash_attn
        self._model: Any = None  # llama_cpp._internals.LlamaModel
        self._n_vocab = 0
        self._template: ChatTemplate | None = None
        self._wake = threading.Condition()
        self._pending: deque[Job] = deque()  # guarded by _wake
        self._stopping = False  # guarded by _wake
        self._thread: threading.Thread | None = None
        self._out = Outbox()  # engine thread only
        self._pieces: dict[int, bytes] = {}  # token -> its text (engine thread only)
        # Which prompt each slot keeps (engine thread only); it counts the prompt tokens
        # whose KV cells were kept from an earlier prompt (not computed).
        # The stream past the last slot is the spare that moves swap cells through.
        self._kv = KvSlots(LLM_TOKENS.labels(model, deployment, "prompt_reused"), spare=slots)

    @property
    def context_window(self) -> int:
        return self._context_per_slot

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def flash_attn(self) -> bool:
        return self._flash_attn

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._engine, args=(loop, ready), name="llama-batch", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._model is not None:
            self._model.close()
            self._model = None

    # -- request preparation (on the event loop: tokenizing is microseconds) ----------

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenize(text.encode(), add_bos=False, special=False))

    def _prepare(self, request: TextRequest) -> tuple[list[int], int]:
        if self._model is None:
            raise ServiceUnavailable("model is still loading", retry_after=1)
        return prompt_tokens(
            request,
            template=self._template,
            tokenize=lambda text, bos, special: self._model.tokenize(text, bos, special),
            n_ctx=self._context_per_slot,
        )

    # -- generation (event loop side) --------------------------------------------------

    async def generate(
        self, request: TextRequest, charge: EngineCharge | None = None
    ) -> Generation:
        usage = Usage()
        return await collect(self.stream(request, usage, charge), request.kind, usage)

    async def stream(
        self, request: TextRequest, usage: Usage, charge: EngineCharge | None = None
    ) -> AsyncIterator[StreamDelta]:
        """The answer's deltas; with ``n`` > 1, one sequence per choice, decoded side by
        side in as many slots, their deltas merged (each keeps its choice index) and
        their tokens and engine time added up in ``usage``."""
        tokens, max_tokens = self._prepare(request)
        count = choice_count(request, self._slots)
        grammar = output_grammar(request)
        charge = charge if charge is not None else EngineCharge()
        seed = request.sampling.seed
        jobs: list[Job] = []
        try:
            for i in range(count):
                # Each choice samples on its own seed, reproducibly when one is given.
                sampling = request.sampling
                if seed is not None and i > 0:
                    sampling = replace(sampling, seed=seed + i)
                jobs.append(self._job(request, tokens, max_tokens, grammar, charge, sampling))
        except BaseException:
            for job in jobs:  # queued already: let the engine drop them
                job.cancelled.set()
            raise
        usage.input_tokens = len(tokens)  # the prompt is counted once, as by OpenAI
        chat = request.kind == "chat"
        # Every choice counts its tokens into ``usage`` and its steps into ``charge``.
        out = merged([self._follow(job, chat, usage) for job in jobs])
        async for delta in answer_shape(request, out):
            yield delta

    def _job(
        self,
        request: TextRequest,
        tokens: list[int],
        max_tokens: int,
        grammar: str | None,
        charge: EngineCharge,
        sampling: SamplingParams,
    ) -> Job:
        loop = asyncio.get_running_loop()
        extra = request.extra
        job = Job(
            tokens=tokens,
            max_tokens=max_tokens,
            sampling=sampling,
            penalties=(
                float(extra.get("frequency_penalty") or 0.0),
                float(extra.get("presence_penalty") or 0.0),
            ),
            grammar=grammar,
            logprobs=logprobs.wanted(request),
            queue=asyncio.Queue(),
            loop=loop,
            done=loop.create_future(),
            charge=charge,
        )
        self._submit(job)
        return job

    async def _follow(self, job: Job, chat: bool, usage: Usage) -> AsyncIterator[StreamDelta]:
        try:
            async for delta in deltas(job.queue, chat, usage):
                yield delta
        finally:
            # A consumer that went away frees its slot at the next step; waiting for that
            # makes the charge final when the stream is closed.
            job.cancelled.set()
            try:
                with contextlib.suppress(Exception):
                    await asyncio.shield(job.done)
            finally:
                # What the engine spent on this request, final unless we were cancelled
                # while waiting for the last step (then it misses at most that step).
                usage.engine_ms = job.charge.engine_ms

    def _submit(self, job: Job) -> None:
        with self._wake:
            if self._stopping or self._thread is None:
                raise ServiceUnavailable("the model is shutting down", retry_after=1)
            waiting = sum(not j.cancelled.is_set() for j in self._pending)
            if waiting >= self._max_queued:
                self._dropped["queue_full"].inc()
                raise ServiceUnavailable(
                    f"all {self._slots} slots are busy and {waiting} requests are queued",
                    retry_after=1,
                )
            self._pending.append(job)
            self._queue_depth.set(len(self._pending))
            self._wake.notify()

    # -- the engine thread ------------------------------------------------------------

    def _engine(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[None]) -> None:
        try:
            ctx, batch = self._load()
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail_start, ready, exc)
            return
        loop.call_soon_threadsafe(resolve, ready)
        self._slot_count.set(self._slots)
        live: list[Job] = []
        free = list(range(self._slots))
        memory = self._kv.memory = lc.llama_get_memory(ctx)
        try:
            while True:
                if not self._admit(live, free):
                    break
                self._drop_cancelled(live, free, memory)
                self._kv.compact(live, free)
                if live:
                    self._step(ctx, batch, live, free, memory)
                self._out.flush(handoff_s=_HANDOFF_S)
        finally:
            # Closing or crashed: refuse new requests, fail the ones in flight; nobody hangs.
            with self._wake:
                self._stopping = True
                orphans = [*live, *self._pending]
                self._pending.clear()
            error = ServiceUnavailable("the model engine stopped", retry_after=1)
            for job in orphans:
                self._out.post(job, "error", error)
                self._release(job, free, memory)
            self._out.flush()
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)

    def _load(self) -> tuple[Any, Any]:
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose

        # llama.cpp logs through one process-wide callback; Llama(verbose=False) in the
        # one-at-a-time backend flips the same switch.
        set_verbose(False)
        lc.llama_backend_init()
        model_params = lc.llama_model_default_params()
        self._model = model = LlamaModel(
            path_model=str(self._path), params=model_params, verbose=False
        )
        self._n_vocab = lc.llama_vocab_n_tokens(model.vocab)
        params = lc.llama_context_default_params()
        # One stream more than the slots: the spare no sequence runs in (``KvSlots``).
        params.n_seq_max = self._slots + 1
        params.n_ctx = (self._slots + 1) * self._context_per_slot
        # Each sequence gets its own KV stream of n_ctx / n_seq_max cells: a slot's
        # attention never scans the other slots' cells, and one long request cannot
        # take the cells of another.
        params.kv_unified = False
        params.n_batch = params.n_ubatch = self._n_batch
        params.n_threads = params.n_threads_batch = self._n_threads
        # AUTO: flash attention wherever llama.cpp's backend has the kernel for this model
        # (the CPU backend does for the bundled one), the plain path elsewhere.
        params.flash_attn_type = (
            lc.LLAMA_FLASH_ATTN_TYPE_AUTO if self._flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        ctx = lc.llama_init_from_model(model.model, params)
        if ctx is None:
            raise BackendError("llama.cpp could not create a context")
        if lc.llama_n_ctx_seq(ctx) < self._context_per_slot:
            lc.llama_free(ctx)
            raise BackendError("llama.cpp gave each sequence fewer cells than asked")
        batch = lc.llama_batch_init(self._n_batch, 0, 1)
        template = model.metadata().get("tokenizer.chat_template")
        if template:
            self._template = ChatTemplate(
                template,
                bos_token=model.detokenize([model.token_bos()], special=True).decode(
                    errors="ignore"
                ),
                eos_token=model.detokenize([model.token_eos()], special=True).decode(
                    errors="ignore"
                ),
            )
        return ctx, batch

    def _admit(self, live: list[Job], free: list[int]) -> bool:
        """Move queued jobs into free slots; block while there is nothing to do.

        Returns False when the backend is closing.
        """
        with self._wake:
            while True:
                if self._stopping:
                    return False
                # A queued request whose consumer left must not wait for a slot to say so.
                for job in [j for j in self._pending if j.cancelled.is_set()]:
                    self._pending.remove(job)
                    self._out.post(job, "done")
                self._expire_waiting()
                placing = sum(job.max_tokens > 0 for job in self._pending)
                while self._pending and free:
                    job = self._pending.popleft()
                    if job.max_tokens == 0:
                        self._out.post(job, "end", "length")
                        self._out.post(job, "done")
                        continue
                    try:
                        sampler = sampler_for(job, self._model.vocab)
                    except BackendError as exc:
                        self._out.post(job, "error", exc)
                        self._out.post(job, "done")
                        continue
                    job.seq, job.n_past = self._kv.take(
                        free, job.tokens, among=min(placing, len(free)), alone=not live
                    )
                    placing -= 1
                    job.charge.reused_tokens, job.charge.slot = job.n_past, job.seq
                    job.sampler = sampler
                    job.matcher = StopMatcher(job.sampling.stop)
                    live.append(job)
                # In slot order: with a KV stream per slot, llama.cpp puts only sequences
                # whose ids follow each other in batch order into one compute pass (8
                # streams in admission order: 125-156 tok/s, in slot order: 227-252).
                live.sort(key=by_seq)
                self._queue_depth.set(len(self._pending))
                self._slots_busy.set(len(live))
                if live:
                    return True
                self._out.flush()
                self._wake.wait()

    def _expire_waiting(self) -> None:
        """Answer 504 to queued requests that waited past their deadline (lock held)."""
        deadline = time.perf_counter() - self._queue_timeout_s
        for job in [j for j in self._pending if j.arrived < deadline]:
            self._pending.remove(job)
            self._dropped["timeout"].inc()
            error = UpstreamTimeout(
                f"no slot of the model freed up within {self._queue_timeout_s:g} s",
                code="queue_timeout",
            )
            self._out.post(job, "error", error)
            self._out.post(job, "done")

    def _drop_cancelled(self, live: list[Job], free: list[int], memory: Any) -> None:
        for job in [j for j in live if j.cancelled.is_set()]:
            live.remove(job)
            self._release(job, free, memory)

    def _release(self, job: Job, free: list[int], memory: Any, *, keep: bool = True) -> None:
        if job.seq >= 0:
            if keep:
                self._kv.keep_prompt(job)
            else:
                lc.llama_memory_seq_rm(memory, job.seq, -1, -1)
            free.append(job.seq)
            job.seq = -1
            self._slots_busy.set(self._slots - len(free))
        if job.sampler is not None:
            lc.llama_sampler_free(job.sampler)
            job.sampler = None
        self._out.post(job, "done")

    def _step(self, ctx: Any, batch: Any, live: list[Job], free: list[int], memory: Any) -> None:
        """One llama_decode over every live sequence, then one sampled token for each."""
        started = time.perf_counter()
        n = prompt_n = 0
        # Every generating sequence gets its one token, so a long prompt never stalls
        # them; prompt chunks share the room left. The batch is laid out in slot order
        # (``live`` is kept so): llama.cpp computes only consecutive sequence ids, in
        # batch order, in one pass.
        room = self._n_batch - sum(job.n_past >= len(job.tokens) for job in live)
        for job in live:
            job.out_idx, job.batch_tokens = -1, 0
            if job.n_past >= len(job.tokens):
                n = _put(batch, n, job.next_token, job.n_past, job.seq, True)
                job.out_idx, job.batch_tokens = n - 1, 1
                continue
            left = len(job.tokens) - job.n_past
            take = min(left, room)
            if take <= 0:
                continue  # no room left in this step's batch
            if job.charge.steps == 0:
                job.charge.queue_ms = (started - job.arrived) * 1000.0
            chunk = job.tokens[job.n_past : job.n_past + take]
            last = job.n_past + len(chunk) == len(job.tokens)
            for i, token in enumerate(chunk):
                n = _put(batch, n, token, job.n_past + i, job.seq, last and i == len(chunk) - 1)
            job.batch_tokens = len(chunk)
            room -= len(chunk)
            prompt_n += len(chunk)
            job.out_idx = n - 1 if last else -1
        batch.n_tokens = n
        code = lc.llama_decode(ctx, batch)
        if code != 0:
            error = BackendError(f"llama_decode failed with code {code}")
            for job in live:
                self._out.post(job, "error", error)
                self._release(job, free, memory, keep=False)
            live.clear()
            return
        sampled: list[tuple[Job, int]] = []
        sampling = [job for job in live if job.out_idx >= 0]  # in batch order
        greedy = self._greedy_tokens(ctx, sampling)
        for row, job in enumerate(sampling):
            if job.greedy:
                token = greedy[row]
            else:
                token = lc.llama_sampler_sample(job.sampler, ctx, job.out_idx)
            if job.logprobs >= 0:  # read before the next decode overwrites the logits
                job.entry = self._logprobs(ctx, job, token)
            sampled.append((job, token))
        for job in live:
            job.n_past += job.batch_tokens
        # Charge before any stream can end, so a closed stream reads its final charge.
        step_ms = (time.perf_counter() - started) * 1000.0
        self._busy.inc(step_ms / 1000.0)
        self._batch_sequences.observe(len(live))
        self._generated_tokens.inc(len(sampled))
        self._prompt_tokens.inc(prompt_n)
        for job in live:
            if job.batch_tokens:
                job.charge.engine_ms += step_ms * job.batch_tokens / n
                job.charge.steps += 1
        for job, token in sampled:
            if self._emit(job, token):
                live.remove(job)
                self._release(job, free, memory)
            else:
                job.next_token = token

    def _greedy_tokens(self, ctx: Any, sampling: list[Job]) -> list[int]:
        """The argmax of each output row of the step (one per job in ``sampling``, the
        jobs that sample this step, in batch order), or [] when none samples greedily.

        One numpy pass over the step's logits: llama.cpp's greedy sampler first copies
        all 49,152 candidates of a row into an array and then scans it, and with 8
        sequences that was most of the step's time outside ``llama_decode``. The argmax
        picks the first of equal logits, as the greedy sampler does.
        """
        if not any(job.greedy for job in sampling):
            return []
        # The rows with logits, contiguous in the order their tokens are in the batch.
        shape = (len(sampling), self._n_vocab)
        logits = np.ctypeslib.as_array(lc.llama_get_logits(ctx), shape=shape)
        return [int(token) for token in logits.argmax(axis=1)]

    def _logprobs(self, ctx: Any, job: Job, token: int) -> dict[str, Any]:
        """The sampled token's logprobs entry, from the logits of its batch position."""
        view = np.ctypeslib.as_array(
            lc.llama_get_logits_ith(ctx, job.out_idx), shape=(self._n_vocab,)
        )
        return logprobs.entry(view, token, job.logprobs, self._piece)

    def _piece(self, token: int) -> bytes:
        """A token's text (bytes: a character may span tokens), remembered: the same for
        every request, and asked for once per generated token."""
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = bytes(self._model.detokenize([token]))
        return piece

    def _emit(self, job: Job, token: int) -> bool:
        """Send one sampled token to its stream; True when the request is finished."""
        job.produced += 1
        matcher = job.matcher
        assert matcher is not None
        if lc.llama_vocab_is_eog(self._model.vocab, token):
            self._out.post(job, "token", matcher.flush())
            self._out.post(job, "end", "stop")
            return True
        text = matcher.feed(self._piece(token))
        entry, job.entry = job.entry, None
        self._out.post(job, "token", text if entry is None else (text, entry))
        if matcher.stopped:
            self._out.post(job, "end", "stop")
            return True
        if job.produced >= job.max_tokens:
            self._out.post(job, "text", matcher.flush())
            self._out.post(job, "end", "length")
            return True
        return False


def _put(batch: Any, n: int, token: int, pos: int, seq: int, logits: bool) -> int:
    batch.token[n] = token
    batch.pos[n] = pos
    batch.n_seq_id[n] = 1
    batch.seq_id[n][0] = seq
    batch.logits[n] = logits
    return n + 1


def _fail_start(ready: asyncio.Future[None], exc: BaseException) -> None:
    if not ready.done():
        ready.set_exception(exc)
