"""StopMatcher: token bytes in, client-safe text out, cut at the first stop string."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.serving.text_stream import StopMatcher


def run(matcher: StopMatcher, pieces: list[bytes]) -> list[str]:
    """Every delta the client would receive, the final flush included."""
    out = [matcher.feed(piece) for piece in pieces]
    out.append(matcher.flush())
    return out


def test_multibyte_character_split_across_tokens_is_sent_whole() -> None:
    matcher = StopMatcher(())
    euro = "€".encode()  # three bytes
    assert [matcher.feed(euro[:1]), matcher.feed(euro[1:2]), matcher.feed(euro[2:])] == [
        "",
        "",
        "€",
    ]
    assert matcher.flush() == ""


def test_emoji_split_across_tokens_with_a_stop_configured() -> None:
    emoji = "🙂".encode()  # four bytes
    deltas = run(StopMatcher(("END",)), [b"ok ", emoji[:2], emoji[2:], b"!"])
    assert deltas == ["ok ", "", "🙂", "!", ""]


def test_stop_split_across_pieces_never_leaks_a_prefix() -> None:
    matcher = StopMatcher(("</s>",))
    assert matcher.feed(b"Hello <") == "Hello "
    assert matcher.feed(b"/") == ""
    assert matcher.feed(b"s") == ""
    assert matcher.feed(b">tail") == ""
    assert matcher.stopped is True
    assert matcher.flush() == ""
    assert matcher.feed(b"more") == ""


def test_text_before_the_stop_in_the_same_piece_is_delivered() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed(b"abcSTOPdef") == "abc"
    assert matcher.stopped is True


def test_false_alarm_prefix_is_released_when_the_next_piece_breaks_it() -> None:
    matcher = StopMatcher(("</s>",))
    assert matcher.feed(b"a </") == "a "
    assert matcher.feed(b"b>") == "</b>"
    assert matcher.stopped is False


def test_flush_releases_held_text_when_no_stop_came() -> None:
    matcher = StopMatcher(("###",))
    assert matcher.feed(b"answer ##") == "answer "
    assert matcher.flush() == "##"
    assert matcher.stopped is False


def test_flush_releases_an_incomplete_utf8_tail_as_replacement() -> None:
    matcher = StopMatcher(())
    assert matcher.feed(b"x" + "€".encode()[:2]) == "x"
    assert matcher.flush() == "\ufffd"


def test_of_several_stops_the_earliest_in_the_text_wins() -> None:
    matcher = StopMatcher(("world", "lo"))
    assert matcher.feed(b"hello world") == "hel"
    assert matcher.stopped is True


def test_the_first_stop_to_complete_ends_the_stream() -> None:
    # "bc" completes on the third piece; "abcd" could only have completed on the fourth.
    deltas = run(StopMatcher(("abcd", "bc")), [b"xa", b"b", b"c", b"d"])
    assert deltas == ["x", "", "a", "", ""]


def test_stops_completing_in_the_same_piece_cut_at_the_earliest_start() -> None:
    deltas = run(StopMatcher(("abcd", "bc")), [b"xa", b"b", b"cd"])
    assert deltas == ["x", "", "", ""]


def test_empty_stop_strings_are_ignored() -> None:
    assert run(StopMatcher(("",)), [b"ab", b"c"]) == ["ab", "c", ""]


def test_no_stops_passes_text_straight_through() -> None:
    assert run(StopMatcher(()), [b"a", b"b"]) == ["a", "b", ""]


@st.composite
def text_pieces_and_stop(draw: st.DrawFn) -> tuple[str, list[bytes], str]:
    alphabet = st.sampled_from(list("ab<>/ é€🙂"))
    text = draw(st.text(alphabet=alphabet, max_size=40))
    stop = draw(st.text(alphabet=alphabet, min_size=1, max_size=5))
    raw = text.encode()
    cuts = sorted(draw(st.sets(st.integers(0, len(raw)), max_size=12)))
    bounds = [0, *cuts, len(raw)]
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    return text, pieces, stop


@settings(max_examples=300, deadline=None)
@given(text_pieces_and_stop())
def test_output_is_the_text_up_to_the_first_stop(case: tuple[str, list[bytes], str]) -> None:
    text, pieces, stop = case
    matcher = StopMatcher((stop,))
    deltas = run(matcher, pieces)
    at = text.find(stop)
    expected = text if at < 0 else text[:at]
    assert "".join(deltas) == expected
    assert matcher.stopped is (at >= 0)


@settings(max_examples=300, deadline=None)
@given(text_pieces_and_stop(), st.lists(st.sampled_from(["a", "b<", "/", "é€", "🙂a"]), max_size=2))
def test_with_several_stops_output_ends_where_the_first_completed_stop_begins(
    case: tuple[str, list[bytes], str], more: list[str]
) -> None:
    text, pieces, stop = case
    stops = (stop, *more)
    deltas = run(StopMatcher(stops), pieces)
    # Reference: after each piece, look at all text decoded so far; the first piece after
    # which some stop is present ends the stream at the earliest such stop.
    expected = text
    seen = b""
    for piece in pieces:
        seen += piece
        decoded = seen.decode("utf-8", errors="ignore")  # a split character is not text yet
        found = [i for s in stops if (i := decoded.find(s)) >= 0]
        if found:
            expected = decoded[: min(found)]
            break
    assert "".join(deltas) == expected
