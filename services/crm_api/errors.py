"""Typed API errors: every refusal carries a stable machine code an agent can act on, and
every database failure is told for what it is (unreachable, a bad value, a duplicate, a
retryable conflict) rather than as one catch-all."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from crmbench_contracts.api_errors import ErrorCode


class ErrorDetail(BaseModel):
    code: ErrorCode = Field(description="Stable machine code of the refusal.")
    field: str | None = Field(default=None, description="The input field that was wrong.")
    message: str = Field(description="What was wrong and how to fix it.")
    allowed: list[Any] | None = Field(
        default=None, description="Allowed values, where that helps to correct the call."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


class CrmError(Exception):
    """A refused request. Raised anywhere below an endpoint; rendered as a 4xx JSON body."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        allowed: list[Any] | None = None,
        status_code: int = 422,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.allowed = allowed
        self.status_code = status_code
        self.headers = headers
        """Extra response headers (Retry-After of a 429, WWW-Authenticate of a 401)."""

    def to_response(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(
                code=self.code, field=self.field, message=self.message, allowed=self.allowed
            )
        )


def not_found(entity: str, entity_id: str, field: str) -> CrmError:
    return CrmError(
        ErrorCode.NOT_FOUND,
        f"No {entity} with id {entity_id!r} exists. Use the {entity} search tool to find its id.",
        field=field,
        status_code=404,
    )


def unknown_reference(entity: str, entity_id: str, field: str) -> CrmError:
    return CrmError(
        ErrorCode.UNKNOWN_FOREIGN_KEY,
        f"{field} refers to a {entity} that does not exist ({entity_id!r}). "
        f"Look the {entity} up with its search tool and use the id it returns.",
        field=field,
        status_code=422,
    )


# ---------------------------------------------------------------------------- database errors

# SQLSTATE classes and codes (https://www.postgresql.org/docs/current/errcodes-appendix.html).
# Unreachable: connection exceptions (08), bad role or password (28), no such database (3D),
# insufficient resources such as too many connections (53), server shutting down (57P).
_UNAVAILABLE_CLASSES = ("08", "28", "3D", "53", "57P")
# Retryable: a serialization failure or deadlock (40), a lock not available (55P03), the
# episode's schema dropped or renamed under the call (3F000 no schema, 42P01 no table).
_RETRYABLE = ("40", "55P03", "3F000", "42P01")
_UNIQUE_VIOLATION = "23505"
# Values Postgres refuses: data exceptions (22: bad encoding, NUL, out of range, too long)
# and integrity violations other than uniqueness (23: not null, check, foreign key).
_BAD_VALUE_CLASSES = ("22", "23")
_KEY_COLUMNS = re.compile(r"Key \((?P<columns>.+?)\)=")
_IDENTIFIER = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b(?!\s*\()")


def _sqlstate(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(exc, "sqlstate", None) or "")


def _postgres_error(exc: BaseException) -> BaseException | None:
    """asyncpg's own exception under SQLAlchemy's wrapper (it carries detail, column...)."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "__cause__", None) or orig


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached or used right now: a refused or
    dropped connection, an unknown database or role, a full server, a pool timeout."""
    if isinstance(exc, OSError | PoolTimeoutError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return _sqlstate(exc).startswith(_UNAVAILABLE_CLASSES)
    return False


def database_unavailable() -> CrmError:
    return CrmError(
        ErrorCode.DATABASE_UNAVAILABLE,
        "The CRM database cannot be reached right now; nothing was written. The service "
        "is not ready: retry later, or tell the operator if it persists.",
        status_code=503,
    )


def unique_field(exc: BaseException) -> str | None:
    """The field a unique violation is about, from Postgres' detail ("Key (lower(email))=..."):
    the last plain column of the key (a composite key is scoped by its first columns)."""
    detail = str(getattr(_postgres_error(exc), "detail", None) or "")
    found = _KEY_COLUMNS.search(detail)
    if found is None:
        return None
    columns = [m.group(0) for m in _IDENTIFIER.finditer(found.group("columns"))]
    return columns[-1] if columns else None


def database_error(exc: DBAPIError) -> CrmError:
    """The API error of a database failure that escaped the service's own checks.

    Unreachable database: 503 DATABASE_UNAVAILABLE. Unique violation: 409
    DUPLICATE_UNIQUE_FIELD naming the field. A value Postgres refuses: 422 INVALID_REQUEST
    naming the column when Postgres does. A serialization failure, deadlock, or the
    episode's schema gone: 409 CONFLICT, the only case worth retrying as is. Anything else
    is a bug: 500 INTERNAL_ERROR. In every case the transaction rolled back.
    """
    state = _sqlstate(exc)
    if is_database_unavailable(exc):
        return database_unavailable()
    pg = _postgres_error(exc)
    if state == _UNIQUE_VIOLATION:
        field = unique_field(exc)
        return CrmError(
            ErrorCode.DUPLICATE_UNIQUE_FIELD,
            f"Another record already has this {field or 'value'}; "
            "nothing was written. Search for the existing record and use it.",
            field=field,
            status_code=409,
        )
    if state.startswith(_BAD_VALUE_CLASSES):
        column = getattr(pg, "column_name", None)
        reason = str(pg).splitlines()[0] if pg is not None else state
        return CrmError(
            ErrorCode.INVALID_REQUEST,
            f"The database refused a value{f' of {column}' if column else ''}: {reason}. "
            "Correct the value; retrying it unchanged fails the same way.",
            field=column,
        )
    if state.startswith(_RETRYABLE):
        return CrmError(
            ErrorCode.CONFLICT,
            "The episode changed while this call ran (reset, restored or dropped); "
            "nothing was written. Retry the call.",
            status_code=409,
        )
    return internal_error()


def internal_error() -> CrmError:
    return CrmError(
        ErrorCode.INTERNAL_ERROR,
        "The service failed on this request (a bug, logged on the server); nothing was "
        "written. Retrying is unlikely to help.",
        status_code=500,
    )


# The error responses every route can return because of the service, not the request.
SERVICE_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    500: {"model": ErrorResponse, "description": "The service failed (INTERNAL_ERROR)."},
    503: {
        "model": ErrorResponse,
        "description": "The database cannot be reached (DATABASE_UNAVAILABLE).",
    },
}

# The error responses every tool can return, for the OpenAPI document.
TOOL_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "Missing or unknown episode token, or the episode expired "
        "(EPISODE_EXPIRED).",
    },
    403: {"model": ErrorResponse, "description": "The episode's actor may not do this."},
    404: {"model": ErrorResponse, "description": "The record named by an id does not exist."},
    409: {
        "model": ErrorResponse,
        "description": "The request conflicts with the record's state, or reuses an "
        "X-Tool-Call-Id with other arguments.",
    },
    422: {"model": ErrorResponse, "description": "The request breaks a field or business rule."},
    **SERVICE_ERROR_RESPONSES,
}
