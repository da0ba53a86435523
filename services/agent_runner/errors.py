"""Typed errors of the agent runner service, rendered in the CRM API's error format
({"error": {code, field, message, allowed}}); refused request bodies become 422s."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from crmbench_contracts.api_errors import RequestProblem, validation_problem


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


def from_problem(problem: RequestProblem, *, with_allowed: bool = True) -> RunnerError:
    return RunnerError(
        RunnerErrorCode(problem.code),
        problem.message,
        status_code=problem.status_code,
        field=problem.field,
        allowed=problem.allowed if with_allowed else None,
    )


def translate_validation_errors(errors: Sequence[Any]) -> RunnerError:
    """The first problem of a refused request as a RunnerError (422); the rest are counted."""
    return from_problem(validation_problem(errors))
