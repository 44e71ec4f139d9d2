"""Dashboard sessions: signed, expiring cookie values that never carry the admin token.

A session is a random id and an expiry instant, signed with HMAC-SHA256 under a key
derived from the admin token. Every gateway process that shares the admin token can
check a session without shared storage, so sessions work with several workers and
survive a restart; changing the admin token ends every session at once. The server
enforces the expiry written inside the signed value, whatever the browser keeps.

Logging out revokes the session id in this process until its expiry (``revoke``).

    signer = SessionSigner("the-admin-token")
    cookie, session = signer.issue()
    assert signer.verify(cookie) == session
    signer.csrf_token(session)  # what every form of this session must send back
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_LIFETIME_S", "LOGIN_FORM_LIFETIME_S", "DashboardSession", "SessionSigner"]

# A working day: long enough not to interrupt an admin, short enough that a cookie left
# on a shared machine stops working by the next morning.
DEFAULT_LIFETIME_S = 8 * 3600.0
# The login form's anti-forgery nonce lives as long as someone may take to type a token.
LOGIN_FORM_LIFETIME_S = 15 * 60.0
# Revoked ids kept before the oldest are forgotten: logouts are rare, memory is bounded.
_MAX_REVOKED = 10_000
_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class DashboardSession:
    """One logged-in browser: an opaque id and the instant (epoch seconds) it ends."""

    id: str
    expires_at: int

    @property
    def subject(self) -> str:
        """What the session was issued for (``issue(subject)``), "" if nothing."""
        subject, sep, _ = self.id.rpartition("~")
        return subject if sep else ""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class SessionSigner:
    """Issues and checks session cookies, login-form nonces and CSRF tokens."""

    def __init__(
        self,
        admin_token: str,
        *,
        lifetime_s: float = DEFAULT_LIFETIME_S,
        clock: Callable[[], float] = time.time,
        key_label: str = "modelmint dashboard session key",
    ) -> None:
        if not admin_token:
            raise ValueError("an admin token is needed to sign sessions")
        # A derived key rather than the token itself: a signature reveals nothing usable
        # against the admin API even if the HMAC were ever weakened. The label keeps
        # the dashboard's and the customer portal's sessions apart: neither's cookie
        # verifies as the other's.
        self._key = hmac.new(admin_token.encode(), key_label.encode(), hashlib.sha256).digest()
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._revoked: dict[str, int] = {}

    def _sign(self, purpose: str, *parts: str) -> str:
        message = "|".join((purpose, *parts)).encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest())

    def now(self) -> int:
        return int(self._clock())

    # -- sessions -------------------------------------------------------------------------

    def issue(self, subject: str = "") -> tuple[str, DashboardSession]:
        """A new session and the cookie value that names it; ``subject`` (no dots, e.g.
        the organisation a portal session speaks for) is signed into its id."""
        if "." in subject or "~" in subject:
            raise ValueError("a session subject cannot contain '.' or '~'")
        token = secrets.token_urlsafe(24)
        session = DashboardSession(
            f"{subject}~{token}" if subject else token,
            self.now() + max(1, int(self.lifetime_s)),
        )
        expires = str(session.expires_at)
        signature = self._sign("session", session.id, expires)
        return f"{_VERSION}.{session.id}.{expires}.{signature}", session

    def verify(self, cookie: str | None) -> DashboardSession | None:
        """The session a cookie value names, or None if forged, expired or revoked."""
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdigit():
            return None
        _, session_id, expires, signature = parts
        expected = self._sign("session", session_id, expires)
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            return None
        session = DashboardSession(session_id, int(expires))
        if session.expires_at <= self.now() or session.id in self._revoked:
            return None
        return session

    def revoke(self, session: DashboardSession) -> None:
        """End a session in this process (logout), remembered until it would expire."""
        now = self.now()
        self._revoked = {sid: end for sid, end in self._revoked.items() if end > now}
        while len(self._revoked) >= _MAX_REVOKED:
            # Dicts keep insertion order: the first entry is the oldest logout.
            del self._revoked[next(iter(self._revoked))]
        self._revoked[session.id] = session.expires_at

    def csrf_token(self, session: DashboardSession) -> str:
        """The anti-forgery token the session's forms carry (derived, so never stored)."""
        return self._sign("csrf", session.id)

    def csrf_valid(self, session: DashboardSession, token: str | None) -> bool:
        expected = self.csrf_token(session)
        return token is not None and hmac.compare_digest(token.encode(), expected.encode())

    # -- the login form -------------------------------------------------------------------

    def login_nonce(self) -> tuple[str, str]:
        """A cookie value for the login page and the form token that must match it.

        The login POST has no session yet; the pair binds the form to the browser that
        loaded it, so another site cannot post a token into this one.
        """
        nonce = secrets.token_urlsafe(18)
        expires = str(self.now() + int(LOGIN_FORM_LIFETIME_S))
        cookie = f"{nonce}.{expires}.{self._sign('login-cookie', nonce, expires)}"
        return cookie, self._sign("login-form", nonce)

    def login_nonce_valid(self, cookie: str | None, form_token: str | None) -> bool:
        if not cookie or not form_token:
            return False
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[1].isdigit():
            return False
        nonce, expires, signature = parts
        genuine = hmac.compare_digest(
            signature.encode(), self._sign("login-cookie", nonce, expires).encode()
        )
        matches = hmac.compare_digest(form_token.encode(), self._sign("login-form", nonce).encode())
        return genuine and matches and int(expires) > self.now()
