"""A streamed answer's deltas put back together as the choices of a full answer."""

from __future__ import annotations

from modelmint.inference.transcript import Transcript


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


def test_streamed_tool_calls_are_captured_as_the_whole_answer_would_carry_them() -> None:
    transcript = Transcript(chat=True)
    named = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "weather"}}
    transcript.add([{"index": 0, "delta": {"tool_calls": [named]}, "finish_reason": None}])
    arguments = {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    transcript.add([{"index": 0, "delta": {"tool_calls": [arguments]}, "finish_reason": None}])
    transcript.add([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])

    [choice] = transcript.choices()
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
