"""The keys that guard the services: which keys are too weak to start with, and how a
presented bearer key is checked (in constant time) against the configured one."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

MIN_KEY_LENGTH = 16
"""A service key shorter than this is refused at startup."""

WEAK_KEYS: frozenset[str] = frozenset(
    {
        "change-me",
        "changeme",
        "change_me",
        "change-me-please",
        "changemechangeme",
        "please-change-me",
        "replace-me",
        "your-admin-key",
        "your-admin-key-here",
        "admin",
        "administrator",
        "adminadminadmin",
        "password",
        "password1234567890",
        "secret",
        "secretsecretsecret",
        "test",
        "testing",
        "default",
        "crmbench",
        "crm-bench",
        "crmbench-admin-key",
        "0123456789abcdef",
        "1234567890123456",
    }
)
"""Placeholders and well-known values refused whatever their length (compared lower-case)."""

GENERATE_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class WeakServiceKey(ValueError):
    """A configured service key is empty, too short or a known placeholder."""


def key_problem(key: str | None, env_var: str) -> str | None:
    """Why `key` (configured in `env_var`) may not guard a service, in one line; None
    when it may. An unset key (None) is not judged here: the caller decides."""
    if key is None:
        return None
    if not key.strip():
        return f"{env_var} is empty; {GENERATE_HINT}"
    if key.strip().lower() in WEAK_KEYS:
        return f"{env_var} is a well-known placeholder ({key!r}); {GENERATE_HINT}"
    if len(key) < MIN_KEY_LENGTH:
        return (
            f"{env_var} is too short ({len(key)} characters, at least {MIN_KEY_LENGTH}); "
            f"{GENERATE_HINT}"
        )
    return None


def require_strong_key(key: str | None, env_var: str) -> None:
    """Raises WeakServiceKey (one line) when `key` is set and weak (see `key_problem`)."""
    problem = key_problem(key, env_var)
    if problem is not None:
        raise WeakServiceKey(problem)


@dataclass(frozen=True)
class KeyRefusal:
    """Why a request's bearer key was refused: its status (401 or 403), code and message."""

    status_code: int
    code: str
    """UNAUTHORIZED (no key sent) or FORBIDDEN (another key)."""
    message: str


def check_bearer(presented: str | None, expected: str, what: str) -> KeyRefusal | None:
    """None when `presented` (the `Authorization: Bearer` token, None when absent) is
    `expected`; else a refusal naming `what` key the route needs."""
    if not presented:
        return KeyRefusal(401, "UNAUTHORIZED", f"Send 'Authorization: Bearer <key>' with {what}.")
    if not secrets.compare_digest(presented.encode(), expected.encode()):
        return KeyRefusal(403, "FORBIDDEN", f"This route needs {what}; the key sent is not it.")
    return None
