"""The one canonical JSON serialisation (crmbench_contracts.canonical)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from crmbench_contracts.canonical import canonical_json


def test_sorted_compact_and_non_ascii_kept() -> None:
    text = canonical_json({"b": [1, 2.5], "a": {"name": "Zoë", "none": None}})
    assert text == '{"a":{"name":"Zoë","none":null},"b":[1,2.5]}'


def test_decimals_and_dates_are_written_as_text() -> None:
    value = {
        "amount": Decimal("75000.10"),
        "day": date(2026, 3, 31),
        "at": datetime(2025, 11, 12, 9, 0, tzinfo=UTC),
    }
    assert canonical_json(value) == (
        '{"amount":"75000.10","at":"2025-11-12T09:00:00+00:00","day":"2026-03-31"}'
    )


def test_other_objects_are_refused() -> None:
    with pytest.raises(TypeError, match="set"):
        canonical_json({"ids": {1, 2}})
