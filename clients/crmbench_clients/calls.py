"""One request of a service client, described once and sent by the async or the sync client.

A `ServiceCall` holds the route, the headers and how to read the answer; `send_async` and
`send_sync` time it, map transport failures and error statuses onto the typed errors, and
decode the JSON. The clients' methods only build calls, so routes, auth and error handling
have one place whichever way the call is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from crmbench_clients.errors import (
    INVALID_RESPONSE,
    TIMEOUT,
    UNREACHABLE,
    InvalidResponse,
    ServiceTimeout,
    ServiceUnavailable,
    error_for_status,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Reply:
    """An answer as a call's reader sees it."""

    status: int
    body: Any
    """The decoded JSON, or the text when the body is not JSON (see `is_json`)."""
    is_json: bool
    latency_ms: float
    """Client-side time from sending the request to reading the whole answer."""


def _success(status: int) -> bool:
    return 200 <= status < 300


@dataclass(frozen=True)
class ServiceCall(Generic[T]):
    """One request and the reader of its answer."""

    service: str
    method: str
    path: str
    read: Callable[[Reply], T]
    json: Any = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    accepts: Callable[[int], bool] = _success
    """Statuses handed to `read`; any other becomes a RequestRefused or ServiceFailed."""

    def invalid(self, reply: Reply, what: str) -> InvalidResponse:
        """The error for an accepted answer whose body is not what `read` expects."""
        shown = reply.body if reply.is_json else repr(str(reply.body)[:200])
        return InvalidResponse(
            self.service,
            f"expected {what}, got {str(shown)[:300]}",
            status=reply.status,
            code=INVALID_RESPONSE,
            method=self.method,
            path=self.path,
        )

    def json_object(self, reply: Reply) -> dict[str, Any]:
        """The answer's body as a JSON object, or InvalidResponse."""
        if not reply.is_json or not isinstance(reply.body, dict):
            raise self.invalid(reply, "a JSON object")
        body: dict[str, Any] = reply.body
        return body

    def _transport_error(self, base_url: str, exc: httpx.HTTPError) -> ServiceUnavailable:
        detail = f"{type(exc).__name__}: {exc or 'no detail'}"
        if isinstance(exc, httpx.TimeoutException):
            return ServiceTimeout(
                self.service,
                f"no answer from {base_url} in time ({detail})",
                code=TIMEOUT,
                method=self.method,
                path=self.path,
            )
        return ServiceUnavailable(
            self.service,
            f"no answer from {base_url} ({detail})",
            code=UNREACHABLE,
            method=self.method,
            path=self.path,
        )

    def _request(self) -> dict[str, Any]:
        request: dict[str, Any] = {"headers": dict(self.headers)}
        if self.json is not None:
            request["json"] = self.json
        if self.params is not None:
            request["params"] = dict(self.params)
        return request

    def _finish(self, response: httpx.Response, latency_ms: float) -> T:
        try:
            body, is_json = response.json(), True
        except ValueError:
            body, is_json = response.text, False
        if not self.accepts(response.status_code):
            raise error_for_status(
                self.service, response.status_code, body, method=self.method, path=self.path
            )
        return self.read(Reply(response.status_code, body, is_json, latency_ms))


async def send_async(http: httpx.AsyncClient, call: ServiceCall[T]) -> T:
    """Sends `call` on an async client; raises ServiceError subclasses as documented."""
    started = time.perf_counter()
    try:
        response = await http.request(call.method, call.path, **call._request())
    except httpx.HTTPError as exc:
        raise call._transport_error(str(http.base_url), exc) from exc
    return call._finish(response, (time.perf_counter() - started) * 1000)


def send_sync(http: httpx.Client, call: ServiceCall[T]) -> T:
    """Sends `call` on a sync client; raises ServiceError subclasses as documented."""
    started = time.perf_counter()
    try:
        response = http.request(call.method, call.path, **call._request())
    except httpx.HTTPError as exc:
        raise call._transport_error(str(http.base_url), exc) from exc
    return call._finish(response, (time.perf_counter() - started) * 1000)


SERVER_KEEP_ALIVE_SECONDS = 15.0
"""How long our services keep an idle connection open (uvicorn's `timeout_keep_alive`,
set by crmbench_clients.serving and crmbench.foreground)."""

KEEPALIVE_EXPIRY_SECONDS = 5.0
"""How long a client keeps an idle connection for reuse: well below the server's
SERVER_KEEP_ALIVE_SECONDS. With the two equal (httpx's and uvicorn's defaults are both
5 s) a client may send on a connection the server is closing at that moment, and the
request fails with a ReadError (seen once in 1,262 random-agent episodes)."""


def connection_limits(max_connections: int) -> httpx.Limits:
    """A pool of `max_connections`, half of them kept alive between requests, each for at
    most KEEPALIVE_EXPIRY_SECONDS."""
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max(1, max_connections // 2),
        keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS,
    )


class AsyncServiceClient:
    """One service's base URL over one async connection pool; `aclose()` (or `async with`)
    ends it. Subclasses add a method per route that builds a `ServiceCall` and sends it."""

    def __init__(self, base_url: str, *, timeout: float, max_connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, limits=connection_limits(max_connections)
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class SyncServiceClient:
    """The blocking twin of `AsyncServiceClient`, for code without an event loop (the
    Gymnasium env); `close()` (or `with`) ends it."""

    def __init__(self, base_url: str, *, timeout: float, max_connections: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url, timeout=timeout, limits=connection_limits(max_connections)
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
