"""What a tool call knows about its episode: schema, clock, actor and its connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from crm_api.domain import ActorRole


@dataclass(frozen=True)
class EpisodeRef:
    """An authenticated episode, as the registry row describes it."""

    episode_id: str
    schema_name: str
    today: date
    actor_name: str
    actor_role: ActorRole
    call_seq: int

    @property
    def now(self) -> datetime:
        """The episode clock: today at 09:00 UTC, one second further per tool call.

        Timestamps written by tools come from here, so they are reproducible.
        """
        start = datetime.combine(self.today, time(9, 0), tzinfo=UTC)
        return start + timedelta(seconds=self.call_seq)


@dataclass
class ToolContext:
    """Everything a tool handler may use; `conn` is inside the call's one transaction."""

    conn: AsyncConnection
    episode: EpisodeRef
    tool_name: str
    tool_call_id: str
