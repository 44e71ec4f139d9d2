"""What the demo's client (``replay``) and the server (``clock``) agree on: the prefix
of demo organisations' names and the two time-travel headers."""

from __future__ import annotations

__all__ = ["DEMO_ADMIN_HEADER", "DEMO_PREFIX", "DEMO_TIME_HEADER"]

# Only organisations named so may be metered in the past.
DEMO_PREFIX = "demo-"
# The instant a demo request is to be metered at (ISO 8601 with an offset), and the
# admin token that proves the sender may ask for it.
DEMO_TIME_HEADER = "X-ModelMint-Demo-Time"
DEMO_ADMIN_HEADER = "X-ModelMint-Admin-Token"
