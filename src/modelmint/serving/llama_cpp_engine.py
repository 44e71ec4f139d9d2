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

from modelmint.errors import ContextLengthExceeded, InvalidRequest, ServiceUnavailable
from modelmint.serving.chat_template import ChatTemplate
from modelmint.serving.text_stream import StopMatcher
from modelmint.serving.types import Generation, StreamDelta, TextRequest, Usage

__all__ = ["LlamaCppBackend"]

# OpenAI request fields a local engine cannot honour; refusing them beats silently ignoring.
_UNSUPPORTED = (
    "tools",
    "functions",
    "tool_choice",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "echo",
    "suffix",
    "best_of",
)


@dataclass(slots=True)
class _Job:
    tokens: list[int]
    max_tokens: int
    request: TextRequest
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
        for name in _UNSUPPORTED:
            if request.extra.get(name) not in (None, False, [], {}):
                raise InvalidRequest(f"{name!r} is not supported by this model", param=name)
        if request.extra.get("n", 1) != 1:
            raise InvalidRequest("this model returns one choice per request (n=1)", param="n")
        response_format = request.extra.get("response_format") or {}
        if response_format.get("type", "text") != "text":
            raise InvalidRequest("only text response_format is supported", param="response_format")
        if request.kind == "chat":
            if self._template is None:
                raise InvalidRequest("this model has no chat template; use /v1/completions")
            prompt = self._template.render(request.messages)
            tokens = self._llm.tokenize(prompt.encode(), add_bos=True, special=True)
        else:
            tokens = self._llm.tokenize(request.prompt.encode(), add_bos=True, special=False)
        room = self._n_ctx - len(tokens)
        max_tokens = request.sampling.max_tokens
        if max_tokens is None:
            max_tokens = room
        if room <= 0 or max_tokens > room:
            raise ContextLengthExceeded(
                f"this model's context window is {self._n_ctx} tokens; the prompt has "
                f"{len(tokens)} and max_tokens asks for {max_tokens}",
                param="max_tokens" if room > 0 else "messages",
            )
        return tokens, max_tokens

    # -- generation ----------------------------------------------------------------

    async def generate(self, request: TextRequest) -> Generation:
        usage = Usage()
        text: list[str] = []
        finish: str | None = None
        async for delta in self.stream(request, usage):
            choice = delta.choices[0]
            piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
            text.append(piece or "")
            finish = choice.get("finish_reason") or finish
        content = "".join(text)
        answer: dict[str, Any]
        if request.kind == "chat":
            answer = {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
                "logprobs": None,
            }
        else:
            answer = {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}
        return Generation(choices=[answer], usage=usage)

    async def stream(self, request: TextRequest, usage: Usage) -> AsyncIterator[StreamDelta]:
        tokens, max_tokens = self._prepare(request)
        usage.input_tokens = len(tokens)
        loop = asyncio.get_running_loop()
        job = _Job(tokens, max_tokens, request, asyncio.Queue(), loop, threading.Event())
        future = loop.run_in_executor(self._worker, self._run, job)
        chat = request.kind == "chat"
        try:
            if chat:
                yield StreamDelta(
                    [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": ""},
                            "finish_reason": None,
                            "logprobs": None,
                        }
                    ]
                )
            while True:
                kind, value = await job.queue.get()
                if kind in ("token", "text"):
                    # "text" is held-back text released at the end; it costs no token.
                    usage.output_tokens += kind == "token"
                    if not value:
                        continue
                    yield StreamDelta([_piece(chat, value, None)])
                elif kind == "end":
                    yield StreamDelta([_piece(chat, "", value)])
                    break
                else:  # "error"
                    raise value
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


def _piece(chat: bool, text: str, finish: str | None) -> dict[str, Any]:
    if chat:
        delta = {"content": text} if text or finish is None else {}
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
