"""Log-probabilities from logits, and what a request may ask of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from modelmint.errors import InvalidRequest
from modelmint.serving import logprobs
from modelmint.serving.types import SamplingParams, TextRequest


def ask(kind: Any, **extra: Any) -> TextRequest:
    return TextRequest(kind=kind, sampling=SamplingParams(), extra=extra)


def test_an_entry_is_the_log_softmax_of_the_logits_with_the_best_alternatives() -> None:
    logits = np.array([1.0, 3.0, 2.0, -1.0], dtype=np.float32)
    found = logprobs.entry(logits, 2, 2, lambda t: f"t{t}".encode())
    norm = math.log(sum(math.exp(x) for x in logits.tolist()))
    assert found["token"] == "t2" and found["bytes"] == list(b"t2")
    assert math.isclose(found["logprob"], 2.0 - norm, rel_tol=1e-9)
    assert [alt["token"] for alt in found["top_logprobs"]] == ["t1", "t2"]
    assert logprobs.entry(logits, 0, 0, lambda t: b"x")["top_logprobs"] == []


def test_completion_chunks_join_into_the_legacy_lists_with_offsets() -> None:
    first = {"token": "ab", "logprob": -0.5, "bytes": [97, 98], "top_logprobs": []}
    second = {"token": "c", "logprob": -1.0, "bytes": [99], "top_logprobs": [first]}
    parts = [logprobs.chunk(False, [first], 0), logprobs.chunk(False, [second], 2)]
    assert logprobs.joined(False, parts) == {
        "tokens": ["ab", "c"],
        "token_logprobs": [-0.5, -1.0],
        "top_logprobs": [{}, {"ab": -0.5}],
        "text_offset": [0, 2],
    }
    chat = logprobs.joined(True, [logprobs.chunk(True, [first], 0)])
    assert chat == {"content": [first], "refusal": None}
    assert logprobs.joined(True, []) is None


@pytest.mark.parametrize(
    ("request_", "count"),
    [
        (ask("chat"), -1),
        (ask("chat", logprobs=False), -1),
        (ask("chat", logprobs=True), 0),
        (ask("chat", logprobs=True, top_logprobs=20), 20),
        (ask("completion"), -1),
        (ask("completion", logprobs=0), 0),
        (ask("completion", logprobs=5), 5),
    ],
)
def test_what_is_asked_for(request_: TextRequest, count: int) -> None:
    assert logprobs.wanted(request_) == count


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (ask("chat", logprobs=1), "logprobs"),
        (ask("chat", logprobs=True, top_logprobs=21), "top_logprobs"),
        (ask("chat", top_logprobs=2), "top_logprobs"),
        (ask("completion", logprobs=6), "logprobs"),
        (ask("completion", logprobs=True), "logprobs"),
    ],
)
def test_what_openai_would_refuse_is_a_400_naming_it(request_: TextRequest, param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        logprobs.wanted(request_)
    assert refused.value.param == param
