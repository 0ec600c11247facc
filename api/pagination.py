"""Keyset (cursor) pagination over ``(created_at, id)``, newest first.

A cursor is an opaque URL-safe token naming the last row of the previous page; the next page holds
the rows strictly older than it. Unlike offsets, pages stay consistent while rows are added.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

from api.errors import Unprocessable
from api.types import is_valid_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not (isinstance(row_id, str) and is_valid_id(row_id)):
            raise ValueError("bad id")
        return datetime.fromisoformat(created_at), row_id
    except (ValueError, TypeError) as exc:
        raise Unprocessable("invalid cursor: pass the next_cursor value of a previous page unchanged",
        ) from exc


def paginate(query: Select[Any], model: Any, limit: int, cursor: str | None) -> Select[Any]:
    """Order newest first and start after ``cursor``; fetches one extra row to tell if more exist."""
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        query = query.where(
            or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < row_id))
        )
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def page(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    """Split the ``limit + 1`` fetched rows into this page and the cursor for the next one."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
