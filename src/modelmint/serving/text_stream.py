"""Turning a stream of token bytes into text deltas, honouring stop strings."""

from __future__ import annotations

import codecs

__all__ = ["StopMatcher"]


class StopMatcher:
    """Incrementally decodes token bytes and cuts the text at the first stop string.

    Text that might be the beginning of a stop string is held back until the next
    token decides, so a client never receives part of a stop sequence.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to send."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        cut = min((i for s in self._stops if (i := self._pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        hold = self._longest_stop_prefix_suffix()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out

    def flush(self) -> str:
        """The held-back text once generation has ended without a stop string."""
        if self.stopped:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest end of the pending text that begins some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:n]):
                    best = n
                    break
        return best
