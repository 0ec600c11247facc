"""Shared pydantic field types for responses."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def _as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes (stored in UTC); PostgreSQL returns aware ones. Answer the same.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCDateTime = Annotated[datetime, AfterValidator(_as_utc)]


_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def is_valid_id(value: str) -> bool:
    """Row ids are 32 lowercase hex characters; anything else cannot exist (answer 404 without a
    query, which also keeps strings PostgreSQL refuses, e.g. with NUL bytes, away from it)."""
    return _ID_PATTERN.fullmatch(value) is not None
