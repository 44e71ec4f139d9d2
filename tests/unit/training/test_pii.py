"""PII scrubbing: what it replaces, what it must leave alone, and properties over
generated text."""

from __future__ import annotations

import re
import secrets
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.training.pii import luhn_valid, scrub, scrub_all


def _luhn_check_digit(body: str) -> str:
    """The digit that makes ``body + digit`` pass Luhn (written independently of pii.py)."""
    total = 0
    for i, char in enumerate(reversed(body)):
        value = int(char)
        if i % 2 == 0:  # these become the odd positions once the check digit is appended
            value = value * 2 % 9 if value != 9 else 9
        total += value
    return str((10 - total % 10) % 10)


def _is_luhn(digits: str) -> bool:
    return _luhn_check_digit(digits[:-1]) == digits[-1]


def _card_numbers_in(text: str) -> list[str]:
    """Every 13-19 digit run of whole groups (single space or hyphen between groups)
    that passes Luhn: the definition of a card number the scrubber promises to remove."""
    found = []
    for run in re.finditer(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])", text):
        groups = re.findall(r"[0-9]+", run[0])
        for i in range(len(groups)):
            for j in range(i + 1, len(groups) + 1):
                digits = "".join(groups[i:j])
                if 13 <= len(digits) <= 19 and _is_luhn(digits):
                    found.append(digits)
    return found


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to ann.lee+news@mail.example.co.uk today", "write to [EMAIL] today"),
        ("Mail: BOB_99@Example.ORG.", "Mail: [EMAIL]."),
        ("(o'brien@example.ie)", "([EMAIL])"),
        ("odd but valid: 0@A--0.xn--p1ai", "odd but valid: [EMAIL]"),
    ],
)
def test_emails_become_placeholders(text: str, expected: str) -> None:
    clean, counts = scrub(text)
    assert clean == expected
    assert counts["email"] == 1


@pytest.mark.parametrize(
    "phone",
    [
        "+1 415 555 2671",
        "+14155552671",
        "+44 20 7946 0958",
        "+49 (0)30 1234 5678",
        "+33 1 23 45 67 89",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "1-800-555-0199",
        "020 7946 0958",
        "07911 123456",
        "030 12345678",
        "01 23 45 67 89",
        "(030) 1234567",
    ],
)
def test_phone_numbers_in_common_formats_become_placeholders(phone: str) -> None:
    clean, counts = scrub(f"Reach me on {phone} after six.")
    assert clean == "Reach me on [PHONE] after six."
    assert counts == {"email": 0, "phone": 1, "card": 0, "secret": 0}


def test_a_bare_number_after_a_phone_cue_is_a_phone() -> None:
    clean, counts = scrub("call me at 4155552671 tomorrow; Tel: 5551234 works too")
    assert clean == "call me at [PHONE] tomorrow; Tel: [PHONE] works too"
    assert counts["phone"] == 2


def test_a_date_after_a_phone_cue_is_still_a_date() -> None:
    assert scrub("call me on 2024-03-15 or tel. 15.03.2024")[0] == (
        "call me on 2024-03-15 or tel. 15.03.2024"
    )


@pytest.mark.parametrize(
    "card",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",
        "3782 822463 10005",  # American Express layout, 15 digits
        "6011000990139424",
        "4222222222222",  # 13-digit Visa
    ],
)
def test_luhn_valid_card_numbers_become_placeholders(card: str) -> None:
    assert luhn_valid(card.replace(" ", "").replace("-", ""))
    clean, counts = scrub(f"paid with {card}, thanks")
    assert clean == "paid with [CARD], thanks"
    assert counts["card"] == 1


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-AbC123dEf456GhI789jKl012",
        "mm-" + "Zr9_k2Lx-8PqA7cW3vN0mYtB5hJ1gD4eF6sU2oR8iQ",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        "d41d8cd98f00b204e9800998ecf8427e",
        "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MEFCQ0RFRg==",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0",
    ],
)
def test_api_keys_and_random_tokens_become_placeholders(secret: str) -> None:
    clean, counts = scrub(f"the key is {secret} ok")
    assert clean == "the key is [SECRET] ok"
    assert counts["secret"] == 1


def test_freshly_generated_modelmint_keys_are_scrubbed() -> None:
    keys = ["mm-" + secrets.token_urlsafe(32) for _ in range(50)]
    clean, counts = scrub_all(f"use {key} please" for key in keys)
    assert clean == ["use [SECRET] please"] * 50
    assert counts["secret"] == 50


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123_xyz", "Authorization: Bearer [SECRET]"),
        ("api_key=abcdef123456 and password: hunter22", "api_key=[SECRET] and password: [SECRET]"),
        ('{"client_secret": "s3cr3t-value"}', '{"client_secret": "[SECRET]"}'),
        ("postgres://app:pa55word@db.internal/x", "postgres://app:[SECRET]@db.internal/x"),
    ],
)
def test_secrets_in_context_keep_the_context(text: str, expected: str) -> None:
    assert scrub(text)[0] == expected


@pytest.mark.parametrize(
    "text",
    [
        "Released on 2024-01-15 at 09:30, also written 15.01.2024 or 01/15/2024.",
        "It costs $1,299.99 (was 1.499,00 EUR), a 12.5% discount.",
        "Upgrade from v1.2.3 to 10.15.7 or python 3.11.4.",
        "Order #123456789 and order ORD-2024-000123 ship together.",
        "Order 4111 1111 1111 1112 is not a card: its check digit is wrong.",
        "Reference 1234567890123 fails Luhn too.",
        "ISBN 978-3-16-148410-0 and UUID 123e4567-e89b-12d3-a456-426614174000.",
        "Server 192.168.1.1 port 8080, years 2019-2024, pi is 3.14159265358979.",
        "The token count: 512 and max_tokens=256; Basic Instructions apply.",
        "A 10 mm-thick plate; sk-learn-is-not-a-secret-key; see getUserById2FromDatabaseV3.",
        "Path /home/User1/Documents/Report2024 and https://example.com/docs/start-here",
        "Scores 0.5, 0.25 and 1e-10; 100000000 rows; room 0123.",
    ],
)
def test_ordinary_numbers_and_words_are_left_alone(text: str) -> None:
    clean, counts = scrub(text)
    assert clean == text
    assert sum(counts.values()) == 0


def test_counts_every_kind_asked_for() -> None:
    text = "a@b.io, c@d.io, +44 20 7946 0958, 4111 1111 1111 1111, sk-AbC123dEf456GhI789jKl0"
    clean, counts = scrub(text)
    assert counts == {"email": 2, "phone": 1, "card": 1, "secret": 1}
    assert clean == "[EMAIL], [EMAIL], [PHONE], [CARD], [SECRET]"


def test_only_the_requested_kinds_are_scrubbed() -> None:
    clean, counts = scrub("a@b.io and 4111111111111111", kinds=["card"])
    assert clean == "a@b.io and [CARD]"
    assert counts == {"card": 1}


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="ssn"):
        scrub("x", kinds=["ssn"])  # type: ignore[list-item]


def test_luhn_valid_matches_known_numbers() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("")
    assert not luhn_valid("12a4")


@pytest.mark.parametrize(
    "text",
    [
        "a" * 20000 + "@" + "b" * 20000,
        "a-" * 20000 + "@",
        "1 " * 20000,
        "1-" * 20000,
        "+1" + " 1" * 10000,
        "A1b2" * 5000,
        "(1" * 20000,
    ],
)
def test_long_adversarial_inputs_stay_fast(text: str) -> None:
    started = time.perf_counter()
    scrub(text)
    # Quadratic backtracking takes minutes on these 40 kB inputs; linear work ~0.3 s.
    assert time.perf_counter() - started < 5


# ------------------------------------------------------------------ properties

_WORDS = st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True)
_SAFE_NUMBERS = st.one_of(
    st.integers(0, 9999).map(str),
    st.decimals(0, 10000, places=2, allow_nan=False).map(lambda d: f"${d}"),
    st.dates().map(lambda d: d.isoformat()),
    st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)).map(
        lambda v: "v{}.{}.{}".format(*v)
    ),
    st.integers(0, 100).map(lambda n: f"{n}%"),
)
_PUNCTUATION = st.sampled_from(["", ",", ".", "!", "?", ";", ":"])


@st.composite
def _prose(draw: st.DrawFn) -> str:
    """Sentences of words, each word perhaps followed by an ordinary number."""
    parts = []
    for _ in range(draw(st.integers(1, 30))):
        parts.append(draw(_WORDS) + draw(_PUNCTUATION))
        if draw(st.booleans()):
            parts.append(draw(_SAFE_NUMBERS) + draw(_PUNCTUATION))
    return " ".join(parts)


@st.composite
def _card(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    number = body + _luhn_check_digit(body)
    layout = draw(st.sampled_from(["bare", "space4", "dash4"]))
    if layout == "bare":
        return number
    separator = " " if layout == "space4" else "-"
    return separator.join(number[i : i + 4] for i in range(0, len(number), 4))


_PII = st.one_of(st.emails(), _card())
_MIXED = st.lists(st.one_of(_WORDS, _SAFE_NUMBERS, _PII), min_size=1, max_size=20).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(_prose())
def test_prose_without_pii_is_unchanged(text: str) -> None:
    assert scrub(text) == (text, {"email": 0, "phone": 0, "card": 0, "secret": 0})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_WORDS, _PII), min_size=1, max_size=12).map(" ".join))
def test_scrubbed_text_holds_no_email_and_no_luhn_valid_card(text: str) -> None:
    clean, _ = scrub(text)
    assert "@" not in clean
    assert _card_numbers_in(clean) == []


@settings(max_examples=200, deadline=None)
@given(_card())
def test_every_generated_card_is_found(card: str) -> None:
    assert _is_luhn(card.replace(" ", "").replace("-", ""))
    clean, counts = scrub(f"card: {card}.")
    assert clean == "card: [CARD]."
    assert counts["card"] == 1


@settings(max_examples=200, deadline=None)
@given(_MIXED)
def test_scrubbing_twice_changes_nothing_more(text: str) -> None:
    once, _ = scrub(text)
    twice, counts = scrub(once)
    assert twice == once
    assert sum(counts.values()) == 0


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_scrubbed_without_error_and_without_cards(text: str) -> None:
    clean, counts = scrub(text)
    assert isinstance(clean, str)
    assert all(v >= 0 for v in counts.values())
    assert _card_numbers_in(clean) == []
