"""Shared helpers for request and response values."""

from __future__ import annotations

import re

_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def is_valid_id(value: str) -> bool:
    """Row ids are 32 lowercase hex characters; anything else cannot exist (answer 404 without a
    query, which also keeps strings PostgreSQL refuses, e.g. with NUL bytes, away from it)."""
    return _ID_PATTERN.fullmatch(value) is not None
