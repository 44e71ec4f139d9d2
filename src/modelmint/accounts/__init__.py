"""Organisations (the customers) and their API keys."""

from modelmint.accounts.keys import (
    KeyInfo,
    create_key,
    hash_secret,
    list_keys,
    lookup_key,
    lookup_key_by_hash,
    revoke_key,
)
from modelmint.accounts.orgs import create_org, ensure_org, get_org, list_orgs, set_org_limits

__all__ = [
    "KeyInfo",
    "create_key",
    "create_org",
    "ensure_org",
    "get_org",
    "hash_secret",
    "list_keys",
    "list_orgs",
    "lookup_key",
    "lookup_key_by_hash",
    "revoke_key",
    "set_org_limits",
]
