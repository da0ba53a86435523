"""Typed API errors: every refusal carries a stable machine code an agent can act on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

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


# The error responses every tool can return, for the OpenAPI document.
TOOL_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorResponse,
        "description": "Missing or unknown episode token, or the episode expired "
        "(EPISODE_EXPIRED).",
    },
    403: {"model": ErrorResponse, "description": "The episode's actor may not do this."},
    404: {"model": ErrorResponse, "description": "The record named by an id does not exist."},
    409: {"model": ErrorResponse, "description": "The request conflicts with the record's state."},
    422: {"model": ErrorResponse, "description": "The request breaks a field or business rule."},
}
