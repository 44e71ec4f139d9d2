"""A request's billable quantities: measured after it ran, bounded before it runs.

Measured quantities come from the usage the gateway metered: tokens, one request,
and the engine time it was charged (``compute_seconds``, exact microseconds).

The bound is what admission reserves against a wallet or a free tier's cap, so it
must never be below what the request can really use:

* prompt tokens <= the UTF-8 bytes of the prompt as JSON, plus a margin for the
  chat template's own tokens (a default system prompt, role markers). Byte-level
  BPE and SentencePiece with byte fallback never spend more than one token per
  byte of text, and the JSON form has more bytes than the text it carries;
* output tokens <= ``max_tokens`` (or the deployment's default) times ``n``;
* compute time <= the request's timeout.

It is deliberately generous: the unused part is released when the request settles.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import orjson

from modelmint.billing import Metric
from modelmint.billing.exact import Quantity
from modelmint.serving.types import TextRequest

__all__ = ["bound_embedding", "bound_prediction", "bound_text", "measured"]

# Tokens a chat template may add around the messages (SmolLM2's default system
# prompt is ~20; generous for others).
_TEMPLATE_MARGIN = 256
_MICROS = Decimal(1_000_000)


def measured(
    endpoint: str, input_tokens: int, output_tokens: int, engine_ms: float
) -> dict[Metric, Quantity]:
    """What a finished request used, per billable metric."""
    # Engine time is a float measurement; it becomes an exact count of microseconds.
    seconds = Decimal(round(engine_ms * 1000)) / _MICROS
    if endpoint != "embeddings":
        return {
            Metric.INPUT_TOKENS: input_tokens,
            Metric.OUTPUT_TOKENS: output_tokens,
            Metric.REQUESTS: 1,
            Metric.COMPUTE_SECONDS: seconds,
        }
    return {
        Metric.EMBEDDING_TOKENS: input_tokens,
        Metric.REQUESTS: 1,
        Metric.COMPUTE_SECONDS: seconds,
    }


def bound_text(
    request: TextRequest, *, default_max_tokens: int, timeout_s: float
) -> dict[Metric, Quantity]:
    """At most what a chat or completion request can use."""
    prompt: object = request.messages if request.kind == "chat" else request.prompt
    input_bound = len(orjson.dumps(prompt)) + _TEMPLATE_MARGIN
    choices = request.extra.get("n") or 1
    if not isinstance(choices, int) or choices < 1:
        choices = 1
    max_tokens = request.sampling.max_tokens or default_max_tokens
    return {
        Metric.INPUT_TOKENS: input_bound,
        Metric.OUTPUT_TOKENS: max_tokens * choices,
        Metric.REQUESTS: 1,
        Metric.COMPUTE_SECONDS: _seconds(timeout_s),
    }


def bound_embedding(texts: Sequence[str], *, timeout_s: float) -> dict[Metric, Quantity]:
    """At most what an embeddings request can use (2 special tokens per input)."""
    tokens = sum(len(text.encode()) + 2 for text in texts)
    return {
        Metric.EMBEDDING_TOKENS: tokens,
        Metric.REQUESTS: 1,
        Metric.COMPUTE_SECONDS: _seconds(timeout_s),
    }


def bound_prediction(*, timeout_s: float) -> dict[Metric, Quantity]:
    """At most what a classification or recommendation request can use: one request
    and its engine time (these models are priced per request or per second)."""
    return {
        Metric.INPUT_TOKENS: 0,
        Metric.OUTPUT_TOKENS: 0,
        Metric.REQUESTS: 1,
        Metric.COMPUTE_SECONDS: _seconds(timeout_s),
    }


def _seconds(timeout_s: float) -> Decimal:
    return Decimal(int(timeout_s) + 1)
