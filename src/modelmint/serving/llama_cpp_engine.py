"""Local LLM backend: a GGUF model run by llama.cpp (through llama-cpp-python) on the CPU.

One worker thread owns the llama.cpp context and serves requests in arrival order;
tokens travel to the event loop one by one, so streams start at the first token.
The usage of every request is counted with the model's own tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_cpp import llama_vocab_is_eog as is_eog
from llama_cpp.llama_grammar import LlamaGrammar

from modelmint.errors import InvalidRequest, ServiceUnavailable
from modelmint.serving import logprobs
from modelmint.serving.chat_template import ChatTemplate
from modelmint.serving.llama_requests import (
    choice_count,
    collect,
    deltas,
    output_grammar,
    prompt_tokens,
)
from modelmint.serving.text_stream import StopMatcher
from modelmint.serving.tool_call_stream import answer_shape
from modelmint.serving.types import Generation, StreamDelta, TextRequest, Usage

__all__ = ["LlamaCppBackend"]


@dataclass(slots=True)
class _Job:
    tokens: list[int]
    max_tokens: int
    request: TextRequest
    grammar: str | None  # GBNF the answer must follow (response_format), or None
    queue: asyncio.Queue[tuple[str, Any]]
    loop: asyncio.AbstractEventLoop
    cancelled: threading.Event


class LlamaCppBackend:
    def __init__(self, model_path: Path, *, n_ctx: int, n_threads: int) -> None:
        self._path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._llm: Any = None
        self._template: ChatTemplate | None = None
        # One thread: llama.cpp contexts are not safe to share between threads.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    @property
    def context_window(self) -> int:
        return self._n_ctx

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    def _load(self) -> None:
        from llama_cpp import Llama

        self._llm = Llama(
            model_path=str(self._path),
            n_ctx=self._n_ctx,
            n_threads=self._n_threads,
            n_threads_batch=self._n_threads,
            n_batch=512,
            verbose=False,
        )
        template = self._llm.metadata.get("tokenizer.chat_template")
        if template:
            vocab = self._llm
            self._template = ChatTemplate(
                template,
                bos_token=vocab.detokenize([vocab.token_bos()], special=True).decode(
                    errors="ignore"
                ),
                eos_token=vocab.detokenize([vocab.token_eos()], special=True).decode(
                    errors="ignore"
                ),
            )

    async def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._llm = None

    # -- request preparation (on the event loop: tokenizing is microseconds) --------

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False))

    def _prepare(self, request: TextRequest) -> tuple[list[int], int]:
        if self._llm is None:
            raise ServiceUnavailable("model is still loading", retry_after=1)
        return prompt_tokens(
            request,
            template=self._template,
            tokenize=lambda text, bos, special: self._llm.tokenize(text, bos, special),
            n_ctx=self._n_ctx,
        )

    # -- generation ----------------------------------------------------------------

    async def generate(self, request: TextRequest) -> Generation:
        usage = Usage()
        return await collect(self.stream(request, usage), request.kind, usage)

    async def stream(self, request: TextRequest, usage: Usage) -> AsyncIterator[StreamDelta]:
        tokens, max_tokens = self._prepare(request)
        choice_count(request, 1)  # one request at a time: one choice
        if logprobs.wanted(request) >= 0:
            raise InvalidRequest(
                "logprobs come with the batched engine; this deployment runs engine: single",
                param="logprobs",
            )
        usage.input_tokens = len(tokens)
        loop = asyncio.get_running_loop()
        grammar = output_grammar(request)
        job = _Job(tokens, max_tokens, request, grammar, asyncio.Queue(), loop, threading.Event())
        future = loop.run_in_executor(self._worker, self._run, job)
        try:
            async for delta in answer_shape(
                request, deltas(job.queue, request.kind == "chat", usage)
            ):
                yield delta
        finally:
            # A client that went away stops the decode at the next token.
            job.cancelled.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(future)

    def _run(self, job: _Job) -> None:
        """Decode on the worker thread, posting ("token", text) and one ("end", reason)."""
        post = job.loop.call_soon_threadsafe
        sampling = job.request.sampling
        llm = self._llm
        vocab = llm._model.vocab
        try:
            if job.cancelled.is_set():
                return
            # llama.cpp seeds are 32-bit; any client seed maps onto one reproducibly.
            seed = sampling.seed % 2**32 if sampling.seed is not None else random.getrandbits(31)
            llm.set_seed(seed)
            matcher = StopMatcher(sampling.stop)
            finish = "length"
            if job.max_tokens == 0:
                post(job.queue.put_nowait, ("end", finish))
                return
            tokens = llm.generate(
                job.tokens,
                grammar=None
                if job.grammar is None
                else LlamaGrammar.from_string(job.grammar, False),
                temp=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                min_p=0.0,
                repeat_penalty=1.0,
                frequency_penalty=float(job.request.extra.get("frequency_penalty") or 0.0),
                presence_penalty=float(job.request.extra.get("presence_penalty") or 0.0),
                reset=True,
            )
            for produced, token in enumerate(tokens, start=1):
                if is_eog(vocab, token):
                    post(job.queue.put_nowait, ("token", matcher.flush()))
                    finish = "stop"
                    break
                text = matcher.feed(llm.detokenize([token]))
                post(job.queue.put_nowait, ("token", text))
                if matcher.stopped:
                    finish = "stop"
                    break
                if produced >= job.max_tokens:
                    post(job.queue.put_nowait, ("text", matcher.flush()))
                    break
                if job.cancelled.is_set():
                    return
            post(job.queue.put_nowait, ("end", finish))
        except Exception as exc:  # surfaced on the event loop, never swallowed
            post(job.queue.put_nowait, ("error", exc))
