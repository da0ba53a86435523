"""Shapes the verifier reads: an episode's state and change log, and its request bodies.

The state and change-log models mirror what the CRM API's GET /episodes/{id}/state and
GET /episodes/{id}/changes return, so a saved response can be scored offline as it is.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ChangeOp = Literal["INSERT", "UPDATE", "DELETE"]

EPISODE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"


class EpisodeState(BaseModel):
    """The final state of an episode: every entity table's rows, ordered by id."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    today: str | None = None
    actor: dict[str, Any] | None = None
    tables: dict[str, list[dict[str, Any]]]


class ChangeEntry(BaseModel):
    """One changed row: `after` for INSERT, `before` for DELETE, both for UPDATE."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    seq: int | None = None
    table: str
    op: ChangeOp
    key: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _rows_present(self) -> Self:
        if self.op in ("INSERT", "UPDATE") and self.after is None:
            raise ValueError(f"an {self.op} change needs `after`")
        if self.op in ("DELETE", "UPDATE") and self.before is None:
            raise ValueError(f"a {self.op} change needs `before`")
        return self


class ToolCallChanges(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    tool_call_id: str | None = None
    tool: str | None = None
    changes: list[ChangeEntry] = Field(default_factory=list)


class ChangeLog(BaseModel):
    """An episode's change log, grouped per tool call, in order."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    episode_id: str | None = None
    tool_calls: list[ToolCallChanges] = Field(default_factory=list)
    total_changes: int | None = None


class InvalidEpisodeData(ValueError):
    """A state or change log that does not have the CRM API's shape."""


def _first_problem(what: str, exc: ValidationError) -> InvalidEpisodeData:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = exc.error_count() - 1
    suffix = f" ({more} more problem{'s' if more > 1 else ''})" if more else ""
    location = f" at {where}" if where else ""
    return InvalidEpisodeData(f"{what}{location}: {first.get('msg')}{suffix}")


def parse_state(data: Any) -> EpisodeState:
    """A state as the CRM API renders it ({"today", "actor", "tables"}), validated."""
    if isinstance(data, EpisodeState):
        return data
    try:
        return EpisodeState.model_validate(data)
    except ValidationError as exc:
        raise _first_problem("state", exc) from None


def parse_changes(data: Any) -> ChangeLog:
    """A change log as the CRM API renders it ({"tool_calls": [...]}), validated."""
    if isinstance(data, ChangeLog):
        return data
    try:
        return ChangeLog.model_validate(data)
    except ValidationError as exc:
        raise _first_problem("changes", exc) from None


class VerifyRequest(BaseModel):
    """Score a live episode: the verifier reads its state and change log from the CRM API."""

    model_config = ConfigDict(extra="forbid")

    case_id: str = Field(min_length=1, max_length=200, description="The golden case's id.")
    episode_id: str = Field(
        pattern=EPISODE_ID_PATTERN, description="The CRM API episode the agent worked in."
    )
    final_reply: str = Field(max_length=200_000, description="The agent's last message.")
    transcript: list[dict[str, Any]] | None = Field(
        default=None, description="The conversation (for the LLM judges), optional."
    )


class VerifyStateRequest(BaseModel):
    """Score a state given inline (a saved episode, or a state built by hand)."""

    model_config = ConfigDict(extra="forbid")

    case_id: str = Field(min_length=1, max_length=200, description="The golden case's id.")
    state: EpisodeState = Field(description="As GET /episodes/{id}/state returns it.")
    changes: ChangeLog = Field(
        default_factory=ChangeLog,
        description="As GET /episodes/{id}/changes returns it; an empty log when omitted.",
    )
    final_reply: str = Field(max_length=200_000, description="The agent's last message.")
    transcript: list[dict[str, Any]] | None = None
    episode_id: str | None = Field(default=None, max_length=128)


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    cases: int | None = Field(description="Cases loaded; null while no corpus is present.")
    crm_api_url: str
