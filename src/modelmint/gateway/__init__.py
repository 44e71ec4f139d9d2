"""The HTTP face of ModelMint: OpenAI-compatible routes, admin routes, auth, errors."""

from modelmint.gateway.app import create_app

__all__ = ["create_app"]
