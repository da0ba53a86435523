"""The agent runner's error codes and typed error, in the services' error format
({"error": {code, field, message, allowed}}, crmbench_contracts.api_errors)."""

from __future__ import annotations

from enum import StrEnum

from crmbench_contracts import api_errors
from crmbench_contracts.api_errors import ApiError, RequestProblem


class RunnerErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_REQUIRED_FIELD = "MISSING_REQUIRED_FIELD"
    EXTRA_FIELD = "EXTRA_FIELD"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    INVALID_RUN_CONFIG = "INVALID_RUN_CONFIG"
    CASE_NOT_FOUND = "CASE_NOT_FOUND"
    NO_CASES = "NO_CASES"
    MISSING_API_KEY = "MISSING_API_KEY"
    AGENT_UNAVAILABLE = "AGENT_UNAVAILABLE"
    CORPUS_UNAVAILABLE = "CORPUS_UNAVAILABLE"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"


# The error body under its plain OpenAPI names (see crmbench_contracts.api_errors).
class ErrorDetail(api_errors.ErrorDetail[RunnerErrorCode]):
    pass


class ErrorResponse(api_errors.ErrorResponse[RunnerErrorCode]):
    error: ErrorDetail


class RunnerError(ApiError[RunnerErrorCode]):
    """A refused or failed request; raised below an endpoint, rendered as a JSON body."""


def from_problem(problem: RequestProblem) -> RunnerError:
    """A refused request (validation or routing) as a RunnerError, with the allowed
    values of an enum or literal field."""
    return RunnerError(
        RunnerErrorCode(problem.code),
        problem.message,
        status_code=problem.status_code,
        field=problem.field,
        allowed=problem.allowed,
    )
