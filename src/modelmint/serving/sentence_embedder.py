"""Local embedding backend: a sentence-transformers model folder run with PyTorch.

Mean pooling over the token embeddings, then L2 normalisation, as the model's
own pooling config prescribes for all-MiniLM-L6-v2. Inputs longer than the
model's maximum sequence length are refused rather than silently truncated:
the caller pays per token and should get what it paid for.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from modelmint.errors import InvalidRequest, ServiceUnavailable
from modelmint.serving.types import EmbeddingResult, Usage

__all__ = ["SentenceEmbeddingBackend"]


class SentenceEmbeddingBackend:
    def __init__(self, model_dir: Path, *, n_threads: int, batch_size: int = 64) -> None:
        self._dir = model_dir
        self._threads = n_threads
        self._batch_size = batch_size
        self._model: Any = None
        self._tokenizer: Any = None
        self.max_tokens = 512
        self.dimensions = 0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._worker, self._load)

    def _load(self) -> None:
        # Everything is on disk; never let a library try the network.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
        torch.set_num_threads(self._threads)
        config_path = self._dir / "sentence_bert_config.json"
        if config_path.exists():
            self.max_tokens = int(json.loads(config_path.read_text())["max_seq_length"])
        self._tokenizer = Tokenizer.from_file(str(self._dir / "tokenizer.json"))
        self._tokenizer.no_truncation()
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._model = AutoModel.from_pretrained(str(self._dir)).eval()
        self.dimensions = int(self._model.config.hidden_size)

    async def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text).ids)

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        if self._model is None:
            raise ServiceUnavailable("model is still loading", retry_after=1)
        encodings = self._tokenizer.encode_batch(texts)
        for i, encoding in enumerate(encodings):
            if len(encoding.ids) > self.max_tokens:
                raise InvalidRequest(
                    f"input[{i}] has {len(encoding.ids)} tokens; this model takes at most "
                    f"{self.max_tokens}",
                    param="input",
                    code="context_length_exceeded",
                )
        usage = Usage(input_tokens=sum(int(sum(e.attention_mask)) for e in encodings))
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._worker, self._forward, encodings)
        return EmbeddingResult(vectors=vectors, usage=usage)

    def _forward(self, encodings: list[Any]) -> list[list[float]]:
        import torch

        out: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(encodings), self._batch_size):
                batch = encodings[start : start + self._batch_size]
                width = max(len(e.ids) for e in batch)
                ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in batch])
                mask = torch.tensor(
                    [e.attention_mask + [0] * (width - len(e.attention_mask)) for e in batch]
                )
                hidden = self._model(input_ids=ids, attention_mask=mask).last_hidden_state
                # (batch, tokens, dim) -> mean over real tokens only
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out.extend(pooled.tolist())
        return out
