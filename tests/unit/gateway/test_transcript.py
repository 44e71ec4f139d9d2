"""A streamed answer's deltas put back together as the choices of a full answer."""

from __future__ import annotations

from modelmint.gateway.transcript import Transcript


def test_chat_deltas_become_one_message_per_choice() -> None:
    transcript = Transcript(chat=True)
    transcript.add([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
    transcript.add([{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}])
    transcript.add([{"index": 1, "delta": {"content": "Other"}, "finish_reason": None}])
    transcript.add([{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}])
    transcript.add([{"index": 0, "delta": {}, "finish_reason": "length"}])

    assert transcript.choices() == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello"},
            "finish_reason": "length",
        },
        {"index": 1, "message": {"role": "assistant", "content": "Other"}, "finish_reason": None},
    ]


def test_a_cut_stream_names_why_it_stopped() -> None:
    transcript = Transcript(chat=False)
    transcript.add([{"index": 0, "text": "Once upon", "finish_reason": None}])
    transcript.add([{"index": 0, "text": " a time", "finish_reason": None}])

    assert transcript.choices("cancelled") == [
        {"index": 0, "text": "Once upon a time", "finish_reason": "cancelled"}
    ]


def test_a_finished_choice_keeps_its_own_reason_over_the_ending() -> None:
    transcript = Transcript(chat=False)
    transcript.add([{"index": 0, "text": "done", "finish_reason": "stop"}])

    assert transcript.choices("error")[0]["finish_reason"] == "stop"
