"""How commands fail: one red line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from crmbench.postgres import DatabaseUnavailable

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def friendly_errors(func: F) -> F:
    """Turns expected failures (no database, bad files) into one-line errors, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except KeyboardInterrupt:
            # Ctrl-C, or SIGTERM (handled alike): `finally` blocks have stopped what ran.
            raise fail("interrupted", 130) from None
        except DatabaseUnavailable as exc:
            raise fail(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise fail(str(exc)) from None
        except Exception as exc:
            from sqlalchemy.exc import DBAPIError

            if isinstance(exc, DBAPIError):
                raise fail(f"database error: {str(exc.orig).splitlines()[0]}") from None
            raise

    return wrapper  # type: ignore[return-value]
