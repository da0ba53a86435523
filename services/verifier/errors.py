"""The verifier's error codes and typed error, in the services' error format
({"error": {code, field, message, allowed}}, crmbench_contracts.api_errors)."""

from __future__ import annotations

from enum import StrEnum

from crmbench_contracts import api_errors
from crmbench_contracts.api_errors import ApiError, RequestProblem


class VerifierErrorCode(StrEnum):
    INVALID_REQUEST = "INVALID_REQUEST"
    MISSING_REQUIRED_FIELD = "MISSING_REQUIRED_FIELD"
    EXTRA_FIELD = "EXTRA_FIELD"
    TYPE_MISMATCH = "TYPE_MISMATCH"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    CASE_NOT_FOUND = "CASE_NOT_FOUND"
    EPISODE_NOT_FOUND = "EPISODE_NOT_FOUND"
    CORPUS_UNAVAILABLE = "CORPUS_UNAVAILABLE"
    NOT_CONFIGURED = "NOT_CONFIGURED"
    CRM_API_UNAVAILABLE = "CRM_API_UNAVAILABLE"
    CRM_API_ERROR = "CRM_API_ERROR"
    JUDGE_FAILED = "JUDGE_FAILED"


# The error body under its plain OpenAPI names (see crmbench_contracts.api_errors).
class ErrorDetail(api_errors.ErrorDetail[VerifierErrorCode]):
    pass


class ErrorResponse(api_errors.ErrorResponse[VerifierErrorCode]):
    error: ErrorDetail


class VerifierError(ApiError[VerifierErrorCode]):
    """A refused or failed verification; raised below an endpoint, rendered as a JSON body."""


def from_problem(problem: RequestProblem) -> VerifierError:
    """A refused request (validation or routing) as a VerifierError; unlike the agent
    runner, the verifier does not report the allowed values."""
    return VerifierError(
        VerifierErrorCode(problem.code),
        problem.message,
        status_code=problem.status_code,
        field=problem.field,
    )
