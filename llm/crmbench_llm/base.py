"""The interface every LLM provider implements, its typed errors, and the shared retry loop.

Providers translate their SDK's failures into `LLMError` with `retryable` set by
`http_failure`/`connection_failure`; `call_with_retries` then retries 429s, 5xxs,
connection errors and timeouts with exponential backoff and jitter, honouring the
provider's Retry-After, and gives up with `retries_exhausted` after `max_retries`.
`LLMError.fault` says whose failure it is: the run's setup, the provider's, or the model's.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol, TypeVar

from crmbench_llm.types import Completion, Message, ToolSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")

Fault = Literal["setup", "outage", "model"]
"""Whose failure an LLM call's error is.

- `setup`: the run cannot work as configured: the key is refused (401), lacks permission
  (403), the model or endpoint does not exist (404), or the key is not set. Every call
  would fail alike, so the run stops; nothing is scored.
- `outage`: the provider could not answer: connection errors, timeouts, 429s and 5xxs
  after every retry, an answer that is not a chat completion. Not the model's doing.
- `model`: the provider refused what the conversation asked (400, 413, 422: a context too
  long, a refused prompt) or a scripted model ran out of replies: the model's episode
  failed, and is scored as such.
"""

SETUP_STATUSES = frozenset({401, 403, 404})
OUTAGE_CODES = frozenset({"retries_exhausted", "connection_error", "timeout", "bad_response"})


class LLMError(RuntimeError):
    """An LLM call failed.

    `code` is machine-readable: `http_error`, `connection_error`, `timeout`,
    `retries_exhausted`, `missing_api_key`, `script_exhausted` or `bad_response`.
    `status` is the HTTP status when the provider answered with one.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        provider: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        """Seconds the provider asked us to wait before retrying, when it said."""
        self.attempts = attempts

    def __str__(self) -> str:
        status = f" {self.status}" if self.status is not None else ""
        return f"[{self.provider} {self.code}{status}] {self.message}"

    @property
    def fault(self) -> Fault:
        """Whose failure this is (see `Fault`)."""
        if self.code == "missing_api_key" or self.status in SETUP_STATUSES:
            return "setup"
        if self.code in OUTAGE_CODES or self.retryable:
            return "outage"
        return "model"


class MissingApiKey(LLMError):
    """The environment variable that should hold the provider's API key is unset or empty."""

    def __init__(self, provider: str, env_var: str) -> None:
        super().__init__(
            f"the API key for {provider} is read from the environment variable {env_var}, "
            f"which is not set; export {env_var}=... (keys are never read from config files)",
            code="missing_api_key",
            provider=provider,
        )
        self.env_var = env_var


_NOTICES_SHOWN: set[str] = set()


def notify_once(notice: str) -> bool:
    """Shows a provider's notice (a model's deprecation, say) once per process, as a
    warning of this logger: on stderr unless logging is set up to send it elsewhere.
    True when shown now, False when it was shown before."""
    if notice in _NOTICES_SHOWN:
        return False
    _NOTICES_SHOWN.add(notice)
    logger.warning(notice)
    return True


class LLMProvider(Protocol):
    """One chat model behind a provider-neutral call."""

    name: str
    """The provider's name as in config: openai, anthropic, scripted."""

    async def aclose(self) -> None:
        """Releases the provider's connections; the provider is not used afterwards."""
        ...

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec] = (),
        *,
        system: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Completion:
        """One model turn for `messages`, with `tools` offered and `system` as the
        system prompt (added before any system messages in `messages`). `headers` are
        added to the HTTP request (the simulated LLM reads the case id from them)."""
        ...


def is_retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    if (millis := lowered.get("retry-after-ms")) is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def http_failure(provider: str, status: int, message: str, headers: Mapping[str, str]) -> LLMError:
    """An error for an HTTP error answer; 429 and 5xx are retryable."""
    return LLMError(
        message,
        code="http_error",
        provider=provider,
        status=status,
        retryable=is_retryable_status(status),
        retry_after=parse_retry_after(headers),
    )


def connection_failure(provider: str, message: str, *, timed_out: bool) -> LLMError:
    """A retryable error for a connection failure or a timeout."""
    return LLMError(
        message,
        code="timeout" if timed_out else "connection_error",
        provider=provider,
        retryable=True,
    )


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int
    backoff_base_seconds: float
    backoff_max_seconds: float

    def delay(self, retry: int, retry_after: float | None, rng: Callable[[], float]) -> float:
        """Seconds before retry number `retry` (0-based): the provider's Retry-After when
        given, else exponential backoff with full jitter over its upper half."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max_seconds)
        ceiling = min(self.backoff_base_seconds * 2.0**retry, self.backoff_max_seconds)
        return ceiling * (0.5 + 0.5 * rng())


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    provider: str,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Runs `attempt` until it succeeds, retrying retryable `LLMError`s per `policy`.

    A non-retryable error is raised as is; running out of retries raises
    `retries_exhausted` carrying the last error's status, chained to it.
    """
    retry = 0
    while True:
        try:
            return await attempt()
        except LLMError as error:
            error.attempts = retry + 1
            if not error.retryable:
                raise
            if retry >= policy.max_retries:
                raise LLMError(
                    f"gave up after {retry + 1} attempts; last error: {error.message}",
                    code="retries_exhausted",
                    provider=provider,
                    status=error.status,
                    attempts=retry + 1,
                ) from error
            wait = policy.delay(retry, error.retry_after, rng)
            logger.warning(
                "llm_retry: %s answered %s; retry %d of %d in %.2fs",
                provider,
                error.status if error.status is not None else error.code,
                retry + 1,
                policy.max_retries,
                wait,
                extra={
                    "provider": provider,
                    "code": error.code,
                    "status": error.status,
                    "retry": retry + 1,
                    "wait_seconds": round(wait, 3),
                },
            )
            await sleep(wait)
            retry += 1
