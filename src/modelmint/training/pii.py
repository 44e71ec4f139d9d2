"""Scrub personal data and secrets out of free text before it is trained on or stored.

``scrub(text)`` replaces emails, phone numbers, payment card numbers and API keys or
other secrets with typed placeholders (``[EMAIL]``, ``[PHONE]``, ``[CARD]``,
``[SECRET]``) and counts what it replaced. Text recipes call it on training data
when asked to; sample capture (feedback) calls it before anything is written.

The rules lean towards precision on the things ordinary text is full of (dates,
prices, version numbers, order ids): a digit run is a card only when its Luhn check
digit is right, and a number is a phone only in a phone-shaped layout (``+`` and a
country code, a national trunk ``0``, the North American 3-3-4 grouping) or right
after a word such as "phone" or "call". Placeholders never match any rule, so
scrubbing twice changes nothing more.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "ALL_KINDS",
    "PLACEHOLDERS",
    "PiiKind",
    "luhn_valid",
    "scrub",
    "scrub_all",
]

PiiKind = Literal["email", "phone", "card", "secret"]
ALL_KINDS: Final[tuple[PiiKind, ...]] = ("email", "phone", "card", "secret")
PLACEHOLDERS: Final[dict[PiiKind, str]] = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "secret": "[SECRET]",
}

# Card numbers are 13-19 digits (ISO/IEC 7812), written bare or in groups.
_CARD_MIN_DIGITS = 13
_CARD_MAX_DIGITS = 19
# E.164 caps a full international number at 15 digits; below 8 it is no phone.
_PHONE_MIN_DIGITS = 8
_PHONE_MAX_DIGITS = 15
# National numbers dialled with a trunk 0 (UK, DE, FR, IT, NL...) have 9-12 digits.
_NATIONAL_MIN_DIGITS = 9
_NATIONAL_MAX_DIGITS = 12
# Tokens this long and this random are keys, hashes or session ids, not words:
# bits of Shannon entropy per character (English prose is about 4 over a long text
# but far lower within one word; random base64 approaches 6, random hex 4).
_MIN_HEX_SECRET = 32
_MIN_B64_SECRET = 24
_MIN_HEX_ENTROPY = 3.0
_MIN_B64_ENTROPY = 3.5
_MIN_CLASS_CHANGE_RATE = 0.35
# Measured on 5,000 random 32-character url-safe tokens: these limits flag about 99% of
# them while names such as "getUserById2FromDatabaseV3" (0.62 word-like) pass.
_MAX_WORDLIKE_SHARE = 0.55
_WORDLIKE = re.compile(r"[a-z]{4,}|[A-Z][a-z]{3,}")


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: PiiKind
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str | None]  # None keeps the match as it was


def luhn_valid(digits: str) -> bool:
    """Whether the digit string ends in a correct Luhn check digit."""
    if not digits.isascii() or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(c for c in text if "0" <= c <= "9")


def _entropy(text: str) -> float:
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _char_classes(text: str) -> int:
    return sum(
        (
            any(c.islower() for c in text),
            any(c.isupper() for c in text),
            any(c.isdigit() for c in text),
        )
    )


# ---------------------------------------------------------------- secrets

# user:password@ in a URL: the password goes, the user and host stay readable.
_URL_CREDENTIALS = re.compile(r"(?<=://)(?P<user>[^\s/:@\[\]]+):(?P<secret>[^\s/@\[\]]+)(?=@)")
_AUTH_HEADER = re.compile(r"\b(?P<keep>(?:Bearer|Basic)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})")
_ASSIGNMENT = re.compile(
    r"(?P<keep>\b(?:api[_-]?key|apikey|secret(?:[_-]?key)?|client[_-]?secret|access[_-]?key"
    r"|access[_-]?token|auth[_-]?token|token|password|passwd|pwd)\b[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<secret>[^\s\"',;\[\]]{6,})",
    re.IGNORECASE,
)
# Vendor key shapes whose prefix alone says "secret".
_PREFIXED = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"(?:sk|mm|pk|rk)[-_][A-Za-z0-9_-]{20,}"  # OpenAI, ModelMint, Stripe-style keys
    r"|AKIA[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
    r")(?![A-Za-z0-9_-])"
)
_HEX_TOKEN = re.compile(rf"(?<![A-Za-z0-9_+/=-])[0-9a-fA-F]{{{_MIN_HEX_SECRET},}}(?![A-Za-z0-9_-])")
_B64_TOKEN = re.compile(rf"(?<![A-Za-z0-9_+/-])[A-Za-z0-9_+/-]{{{_MIN_B64_SECRET},}}={{0,2}}(?!\w)")


def _replace_group(name: str) -> Callable[[re.Match[str]], str]:
    """Replace only the named group, keeping the rest of the match as it was."""

    def replace(match: re.Match[str]) -> str:
        start, end = match.span(name)
        whole = match.group(0)
        offset = match.start()
        return whole[: start - offset] + PLACEHOLDERS["secret"] + whole[end - offset :]

    return replace


def _prefixed_secret(match: re.Match[str]) -> str | None:
    token = match.group(0)
    # "mm-" or "sk-" glued to a hyphenated phrase is prose; keys mix character classes.
    return PLACEHOLDERS["secret"] if _char_classes(token) >= 2 else None


def _hex_secret(match: re.Match[str]) -> str | None:
    token = match.group(0)
    return PLACEHOLDERS["secret"] if _entropy(token) >= _MIN_HEX_ENTROPY else None


def _b64_secret(match: re.Match[str]) -> str | None:
    token = match.group(0).rstrip("=")
    # A path is judged by its longest segment: "/home/Ann2/Reports" is not a key.
    if "/" in token:
        token = max(token.split("/"), key=len)
        if len(token) < _MIN_B64_SECRET // 2:
            return None
    return PLACEHOLDERS["secret"] if _looks_random(token) else None


def _looks_random(token: str) -> bool:
    """Letters, digits and case mixed as in random keys, not as in words or identifiers.

    Random base64 changes character class (lower, upper, digit) between two letters
    about two times in three, and seldom spells four lowercase letters in a row;
    CamelCase names and words-with-a-year are mostly made of such runs.
    """
    alnum = [c for c in token if c.isascii() and c.isalnum()]
    if _char_classes(token) < 3 or _entropy(token) < _MIN_B64_ENTROPY or len(alnum) < 2:
        return False
    changes = sum(_char_class(a) != _char_class(b) for a, b in itertools.pairwise(alnum))
    if changes / (len(alnum) - 1) < _MIN_CLASS_CHANGE_RATE:
        return False
    in_words = sum(len(word) for word in _WORDLIKE.findall(token))
    return in_words / len(token) < _MAX_WORDLIKE_SHARE


def _char_class(char: str) -> int:
    return 0 if char.islower() else 1 if char.isupper() else 2


def _auth_secret(match: re.Match[str]) -> str | None:
    secret = match.group("secret")
    # "Basic Instructions" is prose; credentials carry digits or symbols, or are long.
    credential = any(not c.isalpha() for c in secret) or (
        len(secret) >= 16 and _char_classes(secret) >= 2
    )
    return _replace_group("secret")(match) if credential else None


# ---------------------------------------------------------------- emails

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9]|-++(?=[A-Za-z0-9]))*+"
# Possessive quantifiers and the lookbehind (start only at the start of a run) keep
# the match linear: a long run of address characters without an "@" is tried once.
_EMAIL = re.compile(
    rf"(?<![A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]){_ATEXT}++(?:\.{_ATEXT}++)*+"
    rf"@(?:{_LABEL}\.)+[A-Za-z](?:[A-Za-z0-9]|-++(?=[A-Za-z0-9]))*+"
)


# ---------------------------------------------------------------- cards

# Digit groups joined by single spaces or hyphens; every run of groups that holds
# 13-19 digits is a candidate.
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])")
_GROUP = re.compile(r"[0-9]+")


def _scrub_cards(text: str) -> tuple[str, int]:
    pieces: list[str] = []
    found = 0
    last = 0
    for run in _DIGIT_RUN.finditer(text):
        groups = [(m.start() + run.start(), m.end() + run.start()) for m in _GROUP.finditer(run[0])]
        for start, end in _card_spans(text, groups):
            pieces.append(text[last:start])
            pieces.append(PLACEHOLDERS["card"])
            last = end
            found += 1
    pieces.append(text[last:])
    return "".join(pieces), found


def _card_spans(text: str, groups: list[tuple[int, int]]) -> Iterable[tuple[int, int]]:
    """Left to right, the longest run of whole groups that is a Luhn-valid card number."""
    digits = "".join(text[start:end] for start, end in groups)
    valid = _luhn_windows(digits)
    offsets = [0]  # where each group starts within ``digits``
    for start, end in groups:
        offsets.append(offsets[-1] + end - start)
    i = 0
    while i < len(groups):
        best: int | None = None
        for j in range(i, len(groups)):
            length = offsets[j + 1] - offsets[i]
            if length > _CARD_MAX_DIGITS:
                break
            if length >= _CARD_MIN_DIGITS and valid(offsets[i], offsets[j + 1]):
                best = j
        if best is None:
            i += 1
            continue
        yield groups[i][0], groups[best][1]
        i = best + 1


def _luhn_windows(digits: str) -> Callable[[int, int], bool]:
    """A Luhn check of any ``digits[start:end]`` in constant time.

    Which digits get doubled depends on the window's end, so prefix sums are kept per
    index parity, of plain and of doubled values: a run of many short digit groups
    then costs linear rather than quadratic time.
    """
    plain: tuple[list[int], list[int]] = ([0], [0])
    doubled: tuple[list[int], list[int]] = ([0], [0])
    for index, char in enumerate(digits):
        value = int(char)
        for parity in (0, 1):
            hit = index % 2 == parity
            plain[parity].append(plain[parity][-1] + (value if hit else 0))
            twice = value * 2 - 9 if value >= 5 else value * 2
            doubled[parity].append(doubled[parity][-1] + (twice if hit else 0))

    def valid(start: int, end: int) -> bool:
        kept = (end - 1) % 2  # the check digit's parity: those digits stay as they are
        total = plain[kept][end] - plain[kept][start]
        total += doubled[1 - kept][end] - doubled[1 - kept][start]
        return total % 10 == 0

    return valid


# ---------------------------------------------------------------- phones

# Neither glued to a word, a decimal, a version or a path before, nor continued after.
_BEFORE = r"(?<![0-9A-Za-z+.,/_-])"
_AFTER = r"(?![0-9A-Za-z_]|[.,/-][0-9])"
# A date such as 01.02.2024 or 01-02-24 is never a phone.
_NOT_DATE = r"(?![0-9]{1,2}([./-])[0-9]{1,2}\1[0-9]{2,4}(?![0-9]))"
_INTERNATIONAL = re.compile(_BEFORE + r"\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}" + _AFTER)
_NORTH_AMERICAN = re.compile(
    _BEFORE
    + r"(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}"
    + _AFTER
)
_NATIONAL = re.compile(
    _BEFORE
    + _NOT_DATE
    + r"(?:\(0[1-9][0-9]{0,4}\)|0[1-9][0-9]{0,4})(?:[ .-]?[0-9]{2,8}){1,4}"
    + _AFTER
)
_DATE = re.compile(r"[0-9]{4}([./-])[0-9]{1,2}\1[0-9]{1,2}|[0-9]{1,2}([./-])[0-9]{1,2}\2[0-9]{2,4}")
# A bare number right after a word that says it is one.
_CUED = re.compile(
    r"(?P<keep>\b(?:phone|telephone|tel|mobile|cell|fax|whatsapp|sms|call(?:\s+me)?"
    r"(?:\s+(?:at|on))?|text\s+me(?:\s+(?:at|on))?)\b\.?(?:\s*(?:no\.?|number|#))?\s*[:=]?\s*)"
    r"(?P<number>\+?[0-9][0-9 ().-]{5,}[0-9])" + _AFTER,
    re.IGNORECASE,
)


def _international(match: re.Match[str]) -> str | None:
    text = match.group(0)
    # Greedy grouping may swallow a number that follows the phone: drop trailing
    # groups until the digit count fits E.164 again.
    while len(_digits(text)) > _PHONE_MAX_DIGITS:
        cut = max(text.rfind(" "), text.rfind("-"), text.rfind("."))
        if cut <= 0:
            return None
        text = text[:cut]
    if len(_digits(text)) < _PHONE_MIN_DIGITS:
        return None
    return PLACEHOLDERS["phone"] + match.group(0)[len(text) :]


def _national(match: re.Match[str]) -> str | None:
    count = len(_digits(match.group(0)))
    return PLACEHOLDERS["phone"] if _NATIONAL_MIN_DIGITS <= count <= _NATIONAL_MAX_DIGITS else None


def _cued(match: re.Match[str]) -> str | None:
    number = match.group("number")
    count = len(_digits(number))
    if not 7 <= count <= _PHONE_MAX_DIGITS or _DATE.fullmatch(number):
        return None
    return match.group("keep") + PLACEHOLDERS["phone"]


def _always(kind: PiiKind) -> Callable[[re.Match[str]], str]:
    return lambda match: PLACEHOLDERS[kind]


# Order matters: a password inside a URL comes out before emails (an "@" follows
# it); emails before the other secret shapes (a random-looking local part belongs to
# an address, and a half-replaced address would leave its domain behind); cards
# before phones (a grouped card number can look like a long phone number; the Luhn
# check decides first).
_RULES_BEFORE_CARDS: tuple[_Rule, ...] = (
    _Rule("secret", _URL_CREDENTIALS, _replace_group("secret")),
    _Rule("email", _EMAIL, _always("email")),
    _Rule("secret", _AUTH_HEADER, _auth_secret),
    _Rule("secret", _ASSIGNMENT, _replace_group("secret")),
    _Rule("secret", _PREFIXED, _prefixed_secret),
    _Rule("secret", _HEX_TOKEN, _hex_secret),
    _Rule("secret", _B64_TOKEN, _b64_secret),
)
_RULES_AFTER_CARDS: tuple[_Rule, ...] = (
    _Rule("phone", _CUED, _cued),
    _Rule("phone", _INTERNATIONAL, _international),
    _Rule("phone", _NORTH_AMERICAN, _always("phone")),
    _Rule("phone", _NATIONAL, _national),
)


def _apply(rule: _Rule, text: str) -> tuple[str, int]:
    found = 0

    def substitute(match: re.Match[str]) -> str:
        nonlocal found
        if PLACEHOLDERS[rule.kind] in match.group(0):
            return match.group(0)  # already scrubbed by an earlier rule
        replacement = rule.replace(match)
        if replacement is None:
            return match.group(0)
        found += 1
        return replacement

    return rule.pattern.sub(substitute, text), found


def scrub(text: str, kinds: Iterable[PiiKind] = ALL_KINDS) -> tuple[str, dict[PiiKind, int]]:
    """``text`` with every email, phone, card number and secret of the given kinds
    replaced by its placeholder, and how many of each kind were replaced (every kind
    asked for is a key, zero when none was found)."""
    wanted = frozenset(kinds)
    unknown = wanted - set(ALL_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds: {', '.join(sorted(unknown))}")
    counts: dict[PiiKind, int] = dict.fromkeys((k for k in ALL_KINDS if k in wanted), 0)
    for rule in _RULES_BEFORE_CARDS:
        if rule.kind in wanted:
            text, found = _apply(rule, text)
            counts[rule.kind] += found
    if "card" in wanted:
        text, found = _scrub_cards(text)
        counts["card"] += found
    for rule in _RULES_AFTER_CARDS:
        if rule.kind in wanted:
            text, found = _apply(rule, text)
            counts[rule.kind] += found
    return text, counts


def scrub_all(
    texts: Iterable[str], kinds: Iterable[PiiKind] = ALL_KINDS
) -> tuple[list[str], dict[PiiKind, int]]:
    """Scrub many texts (a training column, a captured conversation) and sum the counts."""
    wanted = tuple(kinds)
    total: dict[PiiKind, int] = dict.fromkeys(wanted, 0)
    cleaned: list[str] = []
    for text in texts:
        clean, counts = scrub(text, wanted)
        cleaned.append(clean)
        for kind, count in counts.items():
            total[kind] += count
    return cleaned, total
