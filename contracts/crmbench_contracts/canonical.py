"""The one canonical JSON serialisation: sorted keys, no whitespace, non-ASCII kept. Episode
states, snapshots and exports are written in it, and the world's version is its digest."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any


def json_default(value: Any) -> str:
    """Decimals as their exact text, dates and datetimes in ISO 8601; TypeError otherwise."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """`value` in canonical JSON (callers that hash or store bytes encode it as UTF-8).
    Raises TypeError for a value JSON cannot hold (see json_default)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=json_default
    )
