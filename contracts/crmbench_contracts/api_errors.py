"""How a refused request maps onto the services' error format
({"error": {code, field, message, allowed}}): one translation of FastAPI's validation and
routing failures, shared by the verifier and the agent runner so both answer bad input
alike. Each service wraps a `RequestProblem` in its own typed error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestProblem:
    code: str
    """INVALID_REQUEST, MISSING_REQUIRED_FIELD, EXTRA_FIELD, TYPE_MISMATCH, NOT_FOUND or
    METHOD_NOT_ALLOWED: codes every service's error enum has."""
    message: str
    status_code: int
    field: str | None = None
    allowed: list[Any] | None = None


def allowed_values(error: Any) -> list[Any] | None:
    """The allowed values of an enum or literal field, from pydantic's error context."""
    expected = (error.get("ctx") or {}).get("expected")
    if error.get("type") not in ("enum", "literal_error") or not isinstance(expected, str):
        return None
    return [part.strip(" '") for part in expected.replace(" or ", ", ").split(", ")]


def validation_problem(errors: Sequence[Any]) -> RequestProblem:
    """The first problem of a refused request (422); the rest are counted in the message."""
    if not errors:
        return RequestProblem("INVALID_REQUEST", "The request is not valid.", 422)
    first = errors[0]
    more = len(errors) - 1
    suffix = f" ({more} more problem{'s' if more > 1 else ''} in this request)" if more else ""
    kind = str(first.get("type", ""))
    parts = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(parts) or None
    message = f"{field}: {first.get('msg')}{suffix}" if field else f"{first.get('msg')}{suffix}"
    code = "INVALID_REQUEST"
    if field is None and kind in ("missing", "model_type", "model_attributes_type", "dict_type"):
        message = "Send a JSON object as the request body." + suffix
    elif kind in ("json_invalid", "json_type"):
        message = "The request body is not valid JSON." + suffix
    elif kind == "missing":
        code, message = "MISSING_REQUIRED_FIELD", f"{field} is required{suffix}"
    elif kind == "extra_forbidden":
        code = "EXTRA_FIELD"
        message = f"{field} is not a field of this request; unknown fields are refused{suffix}"
    elif kind.endswith(("_type", "_parsing")):
        code = "TYPE_MISMATCH"
    return RequestProblem(code, message, 422, field, allowed_values(first))


def routing_problem(status_code: int, detail: Any, method: str, path: str) -> RequestProblem:
    """A Starlette HTTP error (no route, wrong method, unreadable body) in the services' terms."""
    if status_code == 404:
        return RequestProblem("NOT_FOUND", f"No route {path}; see /docs.", 404)
    if status_code == 405:
        return RequestProblem(
            "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}; see /docs.", 405
        )
    if status_code == 400:
        # A body FastAPI cannot decode (not UTF-8) is as unreadable as invalid JSON.
        return RequestProblem(
            "INVALID_REQUEST",
            f"The request body could not be read: {detail}. Send UTF-8 encoded JSON.",
            422,
        )
    return RequestProblem("INVALID_REQUEST", str(detail), status_code)
