"""API keys: generated once, shown once, stored only as a SHA-256 hash.

Keys are 256-bit random tokens, so a plain SHA-256 (not a slow password hash) is the right tool:
there is nothing to brute-force. Lookup is by hash; the final comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import ApiKey, utcnow

KEY_PREFIX = "lh_"
SCOPES = ("admin", "run-code")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, name: str, owner: str | None = None, scopes: list[str] | None = None) -> tuple[ApiKey, str]:
    """Create and store a key; returns the row and the plaintext key (never stored)."""
    scopes = sorted(set(scopes or []))
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}; known scopes: {list(SCOPES)}")
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(owner=owner or name, name=name, prefix=plaintext[:10], key_hash=hash_key(plaintext), scopes=scopes)
    session.add(row)
    session.flush()
    return row, plaintext


def authenticate(session: Session, presented: str) -> ApiKey | None:
    """The active key matching ``presented``, or None."""
    digest = hash_key(presented)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        return None
    return row


def list_keys(session: Session, owner: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id_or_prefix: str, when: datetime | None = None) -> ApiKey | None:
    row = session.scalar(
        select(ApiKey).where((ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix))
    )
    if row is not None and row.revoked_at is None:
        row.revoked_at = when or utcnow()
    return row
