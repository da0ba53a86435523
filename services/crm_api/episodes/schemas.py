"""Request and response models of the episode (admin) routes; seed rows are a shared contract."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from crm_api.domain import ActorRole
from crm_api.fields import date_field, enum_field, text
from crmbench_contracts.seeds import SeedRows


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Actor(Strict):
    name: Annotated[str, text(100)] = "Sam Rivera"
    role: Annotated[ActorRole, enum_field(ActorRole)] = ActorRole.SALES_REP


class EpisodeCreate(Strict):
    case_id: Annotated[str | None, text(100, optional=True)] = Field(
        default=None,
        description="Build the episode from this golden case (its seed, today and actor); "
        "load the corpus first with `crmbench cases load`.",
    )
    today: Annotated[date | None, date_field()] = Field(
        default=None, description="The episode clock's date (YYYY-MM-DD); the world date if unset."
    )
    actor: Actor = Field(default_factory=Actor, description="Who the agent acts as.")
    seed: SeedRows = Field(default_factory=SeedRows)
    ttl_seconds: int | None = Field(
        default=None, ge=10, le=7 * 24 * 3600, description="Idle time before the episode expires."
    )


class EpisodeOut(BaseModel):
    episode_id: str
    case_id: str | None = Field(
        default=None,
        description="The golden case the episode was built from (null when built from a "
        "seed). Admin key only: absent from the episode token's view of GET "
        "/episodes/{episode_id}, so an agent cannot learn which case it plays.",
    )
    today: date
    actor: Actor
    call_seq: int = Field(description="Tool calls that changed or read state so far.")
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ttl_seconds: int
    world_version: str


class EpisodeCreated(EpisodeOut):
    token: str = Field(description="Bearer token for this episode's tool calls. Shown once.")
    tools: list[str] = Field(description="Names of the tools (POST /tools/{name}).")


class EpisodeList(BaseModel):
    episodes: list[EpisodeOut]
    total: int


class SnapshotCreate(Strict):
    name: Annotated[str, text(64)] = Field(
        description="Name of the snapshot: letters, digits, _ . -"
    )


class SnapshotOut(BaseModel):
    name: str
    call_seq: int
    created_at: datetime


class SnapshotList(BaseModel):
    snapshots: list[SnapshotOut]


class ChangeEntry(BaseModel):
    seq: int
    table: str
    op: str = Field(description="INSERT, UPDATE or DELETE")
    key: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class ToolCallChanges(BaseModel):
    tool_call_id: str | None
    tool: str | None
    changes: list[ChangeEntry]


class EpisodeChanges(BaseModel):
    episode_id: str
    tool_calls: list[ToolCallChanges]
    total_changes: int


class EpisodeState(BaseModel):
    """Canonical state: every entity table, rows ordered by primary key."""

    today: date
    actor: Actor
    tables: dict[str, list[dict[str, Any]]]


class Deleted(BaseModel):
    # Two models are called Deleted, so the OpenAPI document names this one by its module;
    # keep the module it was first defined in, so the committed contract stays the same.
    __module__ = "crm_api.episode_schemas"

    episode_id: str
    deleted: bool
