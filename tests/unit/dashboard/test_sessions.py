"""Dashboard sessions: signed, expiring, revocable, and never the admin token itself."""

from __future__ import annotations

import pytest

from modelmint.dashboard.sessions import LOGIN_FORM_LIFETIME_S, SessionSigner

TOKEN = "admin-token-for-tests"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_issued_cookie_names_its_session() -> None:
    signer = SessionSigner(TOKEN)
    cookie, session = signer.issue()
    assert signer.verify(cookie) == session


def test_the_cookie_does_not_carry_the_admin_token() -> None:
    cookie, _ = SessionSigner(TOKEN).issue()
    assert TOKEN not in cookie
    assert TOKEN[:8] not in cookie


def test_each_login_gets_a_new_session_id() -> None:
    signer = SessionSigner(TOKEN)
    assert signer.issue()[1].id != signer.issue()[1].id


@pytest.mark.parametrize("part", [1, 2, 3])
def test_a_tampered_cookie_is_refused(part: int) -> None:
    signer = SessionSigner(TOKEN)
    cookie, _ = signer.issue()
    pieces = cookie.split(".")
    # Change one character of the id, the expiry or the signature.
    original = pieces[part]
    pieces[part] = original[:-1] + ("0" if original[-1] != "0" else "1")
    assert signer.verify(".".join(pieces)) is None


def test_pushing_the_expiry_later_breaks_the_signature() -> None:
    signer = SessionSigner(TOKEN)
    cookie, session = signer.issue()
    version, sid, _, signature = cookie.split(".")
    assert signer.verify(f"{version}.{sid}.{session.expires_at + 86_400}.{signature}") is None


@pytest.mark.parametrize("cookie", [None, "", "v1", "v1.a.b.c", "v2.a.1.c", "x" * 500, "v1.a.1"])
def test_malformed_cookies_are_refused(cookie: str | None) -> None:
    assert SessionSigner(TOKEN).verify(cookie) is None


def test_another_admin_token_does_not_accept_the_cookie() -> None:
    cookie, _ = SessionSigner(TOKEN).issue()
    assert SessionSigner(TOKEN + "-rotated").verify(cookie) is None


def test_sessions_expire_on_the_server() -> None:
    clock = Clock()
    signer = SessionSigner(TOKEN, lifetime_s=600, clock=clock)
    cookie, _ = signer.issue()
    clock.now += 599
    assert signer.verify(cookie) is not None
    clock.now += 1
    assert signer.verify(cookie) is None


def test_a_revoked_session_is_refused_and_others_are_not() -> None:
    signer = SessionSigner(TOKEN)
    first, session = signer.issue()
    second, _ = signer.issue()
    signer.revoke(session)
    assert signer.verify(first) is None
    assert signer.verify(second) is not None


def test_csrf_tokens_belong_to_one_session() -> None:
    signer = SessionSigner(TOKEN)
    _, mine = signer.issue()
    _, theirs = signer.issue()
    token = signer.csrf_token(mine)
    assert signer.csrf_valid(mine, token)
    assert not signer.csrf_valid(theirs, token)
    assert not signer.csrf_valid(mine, None)
    assert not signer.csrf_valid(mine, token[:-1])


def test_the_login_form_token_matches_only_its_own_cookie() -> None:
    signer = SessionSigner(TOKEN)
    cookie, form = signer.login_nonce()
    other_cookie, other_form = signer.login_nonce()
    assert signer.login_nonce_valid(cookie, form)
    assert not signer.login_nonce_valid(cookie, other_form)
    assert not signer.login_nonce_valid(other_cookie, form)
    assert not signer.login_nonce_valid(None, form)
    assert not signer.login_nonce_valid(cookie, None)


def test_the_login_form_expires() -> None:
    clock = Clock()
    signer = SessionSigner(TOKEN, clock=clock)
    cookie, form = signer.login_nonce()
    clock.now += LOGIN_FORM_LIFETIME_S + 1
    assert not signer.login_nonce_valid(cookie, form)


def test_a_signer_needs_an_admin_token() -> None:
    with pytest.raises(ValueError):
        SessionSigner("")
