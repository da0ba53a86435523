"""The one error family of the service clients: what failed, where, and the service's own code.

Every service answers a refusal as `{"error": {code, field, message, allowed}}`; a client
turns it into a `RequestRefused` (4xx) or `ServiceFailed` (5xx) carrying those fields, a
lost connection into `ServiceUnavailable`, and an answer of the wrong shape into
`InvalidResponse`. Callers catch `ServiceError` for all of them.
"""

from __future__ import annotations

from typing import Any

UNREACHABLE = "UNREACHABLE"
"""`code` of a request that got no answer (connection refused, reset, DNS)."""
TIMEOUT = "TIMEOUT"
"""`code` of a request that got no answer in time."""
INVALID_RESPONSE = "INVALID_RESPONSE"
"""`code` of an answer that is not the documented JSON."""
UNEXPECTED_RESPONSE = "UNEXPECTED_RESPONSE"
"""`code` of an error answer without the services' error body (a proxy's page, say)."""


class ServiceError(RuntimeError):
    """A request to a service failed; the caller could not get what it asked for.

    `status` is the HTTP status, or None when no answer arrived. `code`, `field`, `message`
    and `allowed` come from the service's error body when it sent one; otherwise `code` is
    one of this module's constants.
    """

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        code: str = UNEXPECTED_RESPONSE,
        field: str | None = None,
        allowed: list[Any] | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        where = f" ({method} {path})" if method and path else ""
        answered = f"{status} {code}" if status is not None else code
        super().__init__(f"{service} {answered}: {message}{where}")
        self.service = service
        self.status = status
        self.code = code
        self.field = field
        self.message = message
        self.allowed = allowed
        self.method = method
        self.path = path


class ServiceUnavailable(ServiceError):
    """No answer arrived: the service is down, unreachable, or dropped the connection."""


class ServiceTimeout(ServiceUnavailable):
    """No answer arrived within the client's timeout."""


class RequestRefused(ServiceError):
    """The service refused the request (4xx): a bad credential, an unknown id, bad input."""


class ServiceFailed(ServiceError):
    """The service answered with a server error (5xx)."""


class InvalidResponse(ServiceError):
    """The service answered success, but not with the documented body."""


def error_fields(body: Any) -> dict[str, Any] | None:
    """The `{"error": {...}}` object of a service's error body, or None if it has none."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error: dict[str, Any] = body["error"]
        return error
    return None


def error_for_status(
    service: str, status: int, body: Any, *, method: str | None = None, path: str | None = None
) -> ServiceError:
    """The typed error of an answer with a 4xx or 5xx status, from its body."""
    kind = RequestRefused if status < 500 else ServiceFailed
    error = error_fields(body)
    if error is None:
        return kind(
            service,
            str(body)[:500],
            status=status,
            code=UNEXPECTED_RESPONSE,
            method=method,
            path=path,
        )
    allowed = error.get("allowed")
    field = error.get("field")
    return kind(
        service,
        str(error.get("message", "")),
        status=status,
        code=str(error.get("code", "ERROR")),
        field=str(field) if field is not None else None,
        allowed=list(allowed) if isinstance(allowed, list) else None,
        method=method,
        path=path,
    )
