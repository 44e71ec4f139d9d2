"""Failed sign-ins, throttled per client address: dashboard and portal logins, and the
API's keys and admin token (each with its own throttle).

An address that failed ``max_failures`` times within ``window_s`` seconds is refused
until its oldest counted failure leaves the window, even with the right token: a
guesser learns nothing while blocked. A successful login clears the address.

    throttle = LoginThrottle(max_failures=5, window_s=300)
    if (wait := throttle.retry_after("203.0.113.7")) is not None:
        ...  # answer 429 with Retry-After: wait
    throttle.failed("203.0.113.7")

Counts live in the process: with N workers an address gets at most N times the
allowance, still far too few guesses for a random admin token.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from modelmint.errors import RateLimited

__all__ = ["LoginThrottle"]


class LoginThrottle:
    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window_s <= 0 or max_addresses < 1:
            raise ValueError("max_failures, window_s and max_addresses must be positive")
        self.max_failures = max_failures
        self.window_s = window_s
        # Bounds memory when many addresses fail (a scan): the stalest are forgotten.
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def retry_after(self, address: str) -> float | None:
        """Seconds this address must wait before trying again, or None if it may try now."""
        now = self._clock()
        failures = self._recent(address, now)
        if failures is None or len(failures) < self.max_failures:
            return None
        return max(failures[0] + self.window_s - now, 0.001)

    def refuse_if_blocked(self, address: str, what: str = "logins") -> None:
        """Raise 429 (with Retry-After) while the address is blocked."""
        wait = self.retry_after(address)
        if wait is not None:
            raise RateLimited(
                f"too many failed {what} from {address}; try again in {max(1, round(wait))} s",
                retry_after=wait,
                code="login_throttled",
            )

    def failed(self, address: str) -> None:
        now = self._clock()
        failures = self._recent(address, now)
        if failures is None:
            self._make_room(now)
            failures = self._failures[address] = deque(maxlen=self.max_failures)
        failures.append(now)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def _make_room(self, now: float) -> None:
        if len(self._failures) < self.max_addresses:
            return
        for address in list(self._failures):
            self._recent(address, now)
        while len(self._failures) >= self.max_addresses:
            stalest = min(self._failures, key=lambda a: self._failures[a][-1])
            del self._failures[stalest]
