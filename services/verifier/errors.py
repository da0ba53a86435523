"""Typed verifier errors, rendered in the CRM API's error format ({"error": {code, field, ...}})."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class VerifierErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_REQUIRED_FIELD = "MISSING_REQUIRED_FIELD"
    EXTRA_FIELD = "EXTRA_FIELD"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CASE_NOT_FOUND = "CASE_NOT_FOUND"
    EPISODE_NOT_FOUND = "EPISODE_NOT_FOUND"
    CORPUS_UNAVAILABLE = "CORPUS_UNAVAILABLE"
    NOT_CONFIGURED = "NOT_CONFIGURED"
    CRM_API_UNAVAILABLE = "CRM_API_UNAVAILABLE"
    CRM_API_ERROR = "CRM_API_ERROR"
    JUDGE_FAILED = "JUDGE_FAILED"


class ErrorDetail(BaseModel):
    code: VerifierErrorCode = Field(description="Stable machine code of the error.")
    field: str | None = Field(default=None, description="The input field that was wrong.")
    message: str = Field(description="What was wrong and how to fix it.")
    allowed: list[Any] | None = Field(default=None, description="Allowed values, where known.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class VerifierError(Exception):
    """A refused or failed verification; raised below an endpoint, rendered as a JSON body."""

    def __init__(
        self,
        code: VerifierErrorCode,
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
