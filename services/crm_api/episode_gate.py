"""Per-episode admission to the database: each episode's tool calls hold at most a set
number of the service's connections, so one busy episode never starves the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class _Line:
    slots: asyncio.Semaphore
    users: int = field(default=0)


class EpisodeGate:
    """One waiting line per episode (keyed by its token's hash), `limit` calls at a time.

    The calls of one episode serialise on its registry row anyway; without the gate, each
    waiting call would hold a pooled connection while it waits, and a burst on one episode
    would take the whole pool. Lines exist only while a call uses or waits for them.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an episode needs at least one connection")
        self.limit = limit
        self._lines: dict[str, _Line] = {}

    @asynccontextmanager
    async def admit(self, key: str) -> AsyncIterator[None]:
        """Waits (first come, first served) until the episode `key` has a free slot."""
        line = self._lines.get(key)
        if line is None:
            line = self._lines[key] = _Line(asyncio.Semaphore(self.limit))
        line.users += 1
        try:
            async with line.slots:
                yield
        finally:
            line.users -= 1
            if line.users == 0:
                del self._lines[key]

    def waiting(self) -> int:
        """How many episodes have a call running or waiting (for tests and metrics)."""
        return len(self._lines)
