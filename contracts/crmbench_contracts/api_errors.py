"""The services' error format ({"error": {code, field, message, allowed}}) and the CRM
API's machine codes: one typed error base for the verifier and the agent runner (each
keeps its own code enum), and one translation of refused requests (validation and routing
failures) so every service answers bad input alike. Pydantic only: the FastAPI handlers
that render these live in crmbench_clients.http_errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field


# The CRM API's machine codes: what a refused tool call says, and what a case's
# `expect_error` and failure categories name. (No docstring: it would become the enum's
# description in docs/openapi.json.)
class ErrorCode(StrEnum):
    # schema
    INVALID_ENUM = "INVALID_ENUM"
    ENUM_CASE_MISMATCH = "ENUM_CASE_MISMATCH"
    ENUM_WHITESPACE = "ENUM_WHITESPACE"
    MISSING_REQUIRED_FIELD = "MISSING_REQUIRED_FIELD"
    EXTRA_FIELD = "EXTRA_FIELD"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    # domain values
    NEGATIVE_AMOUNT = "NEGATIVE_AMOUNT"
    ZERO_AMOUNT = "ZERO_AMOUNT"
    AMOUNT_EXCEEDS_MAX = "AMOUNT_EXCEEDS_MAX"
    PROBABILITY_OUT_OF_RANGE = "PROBABILITY_OUT_OF_RANGE"
    PROBABILITY_DECIMAL = "PROBABILITY_DECIMAL"
    PAST_DATE = "PAST_DATE"
    INVALID_DATE_FORMAT = "INVALID_DATE_FORMAT"
    # relations
    UNKNOWN_FOREIGN_KEY = "UNKNOWN_FOREIGN_KEY"
    DUPLICATE_UNIQUE_FIELD = "DUPLICATE_UNIQUE_FIELD"
    CROSS_ENTITY_MISMATCH = "CROSS_ENTITY_MISMATCH"
    # strings
    BLANK_STRING = "BLANK_STRING"
    MALFORMED_EMAIL = "MALFORMED_EMAIL"
    UNSAFE_FILENAME = "UNSAFE_FILENAME"
    UNSUPPORTED_FILE_EXTENSION = "UNSUPPORTED_FILE_EXTENSION"
    MISSING_FILE_EXTENSION = "MISSING_FILE_EXTENSION"
    # workflow
    MODIFY_CLOSED_OPPORTUNITY = "MODIFY_CLOSED_OPPORTUNITY"
    INVALID_STAGE_TRANSITION = "INVALID_STAGE_TRANSITION"
    UNKNOWN_FIELD_UPDATE = "UNKNOWN_FIELD_UPDATE"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    # outside the customer's taxonomy
    NOT_FOUND = "NOT_FOUND"
    INVALID_DATE_RANGE = "INVALID_DATE_RANGE"
    MODIFY_FINAL_QUOTE = "MODIFY_FINAL_QUOTE"
    HAS_DEPENDENTS = "HAS_DEPENDENTS"
    NO_CHANGES = "NO_CHANGES"
    INVALID_REQUEST = "INVALID_REQUEST"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    EPISODE_NOT_FOUND = "EPISODE_NOT_FOUND"
    EPISODE_EXPIRED = "EPISODE_EXPIRED"
    TOO_MANY_EPISODES = "TOO_MANY_EPISODES"
    SNAPSHOT_NOT_FOUND = "SNAPSHOT_NOT_FOUND"
    UNKNOWN_TOOL = "UNKNOWN_TOOL"
    CONFLICT = "CONFLICT"
    TOOL_CALL_ID_REUSED = "TOOL_CALL_ID_REUSED"
    # the service, not the request
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# ---------------------------------------------------------------------------- error base

CodeT = TypeVar("CodeT", bound=StrEnum)

# A service subclasses ErrorDetail[ItsCode] and ErrorResponse[ItsCode] (with `error` of its
# ErrorDetail) under the plain names, so its OpenAPI document calls them ErrorDetail and
# ErrorResponse and lists its codes. They carry no docstring: it would become the schema's
# description.


class ErrorDetail(BaseModel, Generic[CodeT]):
    code: CodeT = Field(description="Stable machine code of the error.")
    field: str | None = Field(default=None, description="The input field that was wrong.")
    message: str = Field(description="What was wrong and how to fix it.")
    allowed: list[Any] | None = Field(default=None, description="Allowed values, where known.")


class ErrorResponse(BaseModel, Generic[CodeT]):
    error: ErrorDetail[CodeT]


class ApiError(Exception, Generic[CodeT]):
    """A refused or failed request of a service; raised below an endpoint, rendered as
    its JSON body by crmbench_clients.http_errors.install_error_handlers."""

    def __init__(
        self,
        code: CodeT,
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

    def to_response(self) -> ErrorResponse[CodeT]:
        detail = ErrorDetail[Any](
            code=self.code, field=self.field, message=self.message, allowed=self.allowed
        )
        return ErrorResponse[Any](error=detail)


# ---------------------------------------------------------------------------- refused requests


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
