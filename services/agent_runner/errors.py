"""Typed errors of the agent runner service, rendered in the CRM API's error format
({"error": {code, field, message, allowed}}); refused request bodies become 422s."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class RunnerErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_REQUIRED_FIELD = "MISSING_REQUIRED_FIELD"
    EXTRA_FIELD = "EXTRA_FIELD"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    INVALID_RUN_CONFIG = "INVALID_RUN_CONFIG"
    CASE_NOT_FOUND = "CASE_NOT_FOUND"
    NO_CASES = "NO_CASES"
    MISSING_API_KEY = "MISSING_API_KEY"
    AGENT_UNAVAILABLE = "AGENT_UNAVAILABLE"
    CORPUS_UNAVAILABLE = "CORPUS_UNAVAILABLE"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"


class ErrorDetail(BaseModel):
    code: RunnerErrorCode = Field(description="Stable machine code of the error.")
    field: str | None = Field(default=None, description="The input field that was wrong.")
    message: str = Field(description="What was wrong and how to fix it.")
    allowed: list[Any] | None = Field(default=None, description="Allowed values, where known.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class RunnerError(Exception):
    """A refused or failed request; raised below an endpoint, rendered as a JSON body."""

    def __init__(
        self,
        code: RunnerErrorCode,
        message: str,
        *,
        status_code: int,
        field: str | None = None,
        allowed: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status_code = status_code
        self.field = field
        self.allowed = allowed

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                code=self.code, field=self.field, message=self.message, allowed=self.allowed
            )
        )


def _allowed(error: Any) -> list[Any] | None:
    """The allowed values of an enum or literal field, from pydantic's error context."""
    expected = (error.get("ctx") or {}).get("expected")
    if error.get("type") not in ("enum", "literal_error") or not isinstance(expected, str):
        return None
    return [part.strip(" '") for part in expected.replace(" or ", ", ").split(", ")]


def translate_validation_errors(errors: Sequence[Any]) -> RunnerError:
    """The first problem of a refused request as a RunnerError (422); the rest are counted.

    The same translation as the verifier's, so both services answer bad input alike.
    """
    if not errors:
        return RunnerError(
            RunnerErrorCode.INVALID_REQUEST, "The request is not valid.", status_code=422
        )
    first = errors[0]
    more = len(errors) - 1
    suffix = f" ({more} more problem{'s' if more > 1 else ''} in this request)" if more else ""
    kind = str(first.get("type", ""))
    parts = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(parts) or None
    message = f"{field}: {first.get('msg')}{suffix}" if field else f"{first.get('msg')}{suffix}"
    code = RunnerErrorCode.INVALID_REQUEST
    if field is None and kind in ("missing", "model_type", "model_attributes_type", "dict_type"):
        message = "Send a JSON object as the request body." + suffix
    elif kind in ("json_invalid", "json_type"):
        message = "The request body is not valid JSON." + suffix
    elif kind == "missing":
        code, message = RunnerErrorCode.MISSING_REQUIRED_FIELD, f"{field} is required{suffix}"
    elif kind == "extra_forbidden":
        code = RunnerErrorCode.EXTRA_FIELD
        message = f"{field} is not a field of this request; unknown fields are refused{suffix}"
    elif kind.endswith(("_type", "_parsing")):
        code = RunnerErrorCode.TYPE_MISMATCH
    return RunnerError(code, message, field=field, status_code=422, allowed=_allowed(first))
