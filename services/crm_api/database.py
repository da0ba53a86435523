"""Connections to Postgres: one async engine per process, episodes addressed by schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

URL_SHAPE = "postgresql://user:password@host:port/database"


def parse_database_url(url: str) -> URL:
    """The parsed Postgres URL; ValueError with one line naming the problem (never the URL,
    which may hold a password) when it is not one."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        reason = "it cannot be parsed"
    except ValueError:  # make_url reads the port as a number
        reason = "its port is not a number"
    else:
        reason = ""
    if reason:
        raise ValueError(
            f"DATABASE_URL is not a valid database URL: {reason}; expected {URL_SHAPE}"
        )
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(
            f"DATABASE_URL must be a PostgreSQL URL, got {parsed.drivername!r}; "
            f"expected {URL_SHAPE}"
        )
    return parsed


def async_url(url: str) -> str:
    """Normalises a Postgres URL to the asyncpg driver SQLAlchemy needs (ValueError when it
    is not a Postgres URL, see parse_database_url)."""
    parsed = parse_database_url(url)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    # Timestamps are rendered in UTC everywhere (canonical state, change log), whatever the
    # server's default time zone is.
    return create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        # No pre-ping: it costs three round trips per request; stale connections are
        # recycled instead.
        pool_recycle=1800,
        connect_args={"server_settings": {"timezone": "UTC", "jit": "off"}},
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction: commits when the block ends normally, rolls back on any exception."""
    async with engine.begin() as conn:
        yield conn
