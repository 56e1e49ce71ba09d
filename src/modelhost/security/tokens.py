"""API tokens: random, prefixed `mh_`, stored only as a SHA-256 hash plus a display prefix."""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "mh_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[:10]


def new_id(prefix: str = "") -> str:
    """Short random ids for tokens, deployments and replicas (not guessable, URL-safe)."""
    return prefix + secrets.token_hex(8)
