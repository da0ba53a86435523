"""Turns pydantic validation errors into the API's error format with taxonomy codes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from crm_api.errors import CrmError
from crmbench_contracts.api_errors import ErrorCode

_TYPE_ERRORS = (
    "string_type",
    "int_type",
    "float_type",
    "bool_type",
    "list_type",
    "dict_type",
    "model_type",
    "model_attributes_type",
    "decimal_type",
    "date_type",
    "datetime_type",
    "int_parsing",
    "float_parsing",
    "decimal_parsing",
    "int_from_float",
    "string_too_long",
    "string_too_short",
    "too_long",
    "too_short",
    "date_from_datetime_parsing",
    "datetime_from_date_parsing",
    "date_parsing",
    "datetime_parsing",
)


def _field_of(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or None


def translate_validation_errors(
    errors: Sequence[Any], *, is_update: bool, known: list[str] | None
) -> CrmError:
    """The first problem of a refused request, as a CrmError; the rest are counted."""
    if not errors:
        return CrmError(ErrorCode.INVALID_REQUEST, "The request is not valid.")
    first = errors[0]
    more = len(errors) - 1
    suffix = f" ({more} more problem{'s' if more > 1 else ''} in this request)" if more else ""
    kind = first.get("type", "")
    loc = first.get("loc", ())
    field = _field_of(loc)
    ctx = first.get("ctx") or {}
    if kind == "crm":
        return CrmError(
            ErrorCode(ctx["crm_code"]),
            f"{field}: {ctx['crm_message']}{suffix}" if field else ctx["crm_message"] + suffix,
            field=field,
            allowed=ctx.get("allowed"),
        )
    if kind == "missing":
        if field is None:
            return CrmError(
                ErrorCode.INVALID_REQUEST,
                "Send a JSON object as the request body ({} when there are no arguments)." + suffix,
            )
        return CrmError(
            ErrorCode.MISSING_REQUIRED_FIELD, f"{field} is required{suffix}", field=field
        )
    if kind == "extra_forbidden":
        code = ErrorCode.UNKNOWN_FIELD_UPDATE if is_update else ErrorCode.EXTRA_FIELD
        return CrmError(
            code,
            f"{field} is not a field of this tool; unknown fields are refused, not ignored."
            + suffix,
            field=field,
            allowed=known,
        )
    if field is None and kind in ("model_type", "model_attributes_type", "dict_type"):
        return CrmError(
            ErrorCode.INVALID_REQUEST,
            "The request body must be a JSON object ({} when there are no arguments)." + suffix,
        )
    if kind in ("enum", "literal_error"):
        allowed = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return CrmError(
            ErrorCode.INVALID_ENUM,
            f"{field}: {first.get('msg')}{suffix}",
            field=field,
            allowed=allowed or None,
        )
    if kind in ("json_invalid", "json_type"):
        return CrmError(ErrorCode.INVALID_REQUEST, "The request body is not valid JSON." + suffix)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return CrmError(
            ErrorCode.INVALID_REQUEST, f"{field}: {first.get('msg')}{suffix}", field=field
        )
    if kind in _TYPE_ERRORS or kind.endswith("_type"):
        return CrmError(
            ErrorCode.TYPE_MISMATCH, f"{field}: {first.get('msg')}{suffix}", field=field
        )
    return CrmError(ErrorCode.INVALID_REQUEST, f"{field}: {first.get('msg')}{suffix}", field=field)
