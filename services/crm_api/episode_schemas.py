"""Request and response models of the episode (admin) routes."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from crm_api.domain import (
    ActorRole,
    ClientStatus,
    CompanyType,
    ContractStatus,
    DocumentEntityType,
    NoteEntityType,
    OpportunityStage,
    QuoteStatus,
)
from crm_api.fields import date_field, enum_field, text


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SeedId = Annotated[str, text(100)]
SeedText = Annotated[str | None, text(5000, optional=True)]
SeedName = Annotated[str, text(200)]


class ClientSeed(Strict):
    client_id: SeedId
    name: SeedName
    industry: SeedText = None
    email: SeedText = None
    phone: SeedText = None
    address: SeedText = None
    status: ClientStatus = ClientStatus.PROSPECT
    created_date: datetime | None = None
    owner: SeedText = None


class CompanySeed(Strict):
    company_id: SeedId
    name: SeedName
    type: CompanyType | None = None
    industry: SeedText = None
    address: SeedText = None
    contacts: list[SeedId] = Field(default_factory=list)


class ContactSeed(Strict):
    contact_id: SeedId
    first_name: SeedName
    last_name: SeedName
    title: SeedText = None
    email: SeedText = None
    phone: SeedText = None
    client_id: SeedId
    notes: SeedText = None


class OpportunitySeed(Strict):
    opportunity_id: SeedId
    name: SeedName
    client_id: SeedId
    stage: OpportunityStage
    amount: Decimal = Field(gt=0, le=10_000_000, decimal_places=2)
    close_date: date | None = None
    owner: SeedText = None
    probability: int | None = Field(default=None, ge=0, le=100)
    notes: SeedText = None


class QuoteSeed(Strict):
    quote_id: SeedId
    opportunity_id: SeedId
    version: Annotated[str, text(20)] = "1"
    amount: Decimal = Field(gt=0, le=10_000_000, decimal_places=2)
    status: QuoteStatus = QuoteStatus.DRAFT
    valid_until: date | None = None
    created_date: datetime | None = None
    quote_prefix: SeedText = None


class ContractSeed(Strict):
    contract_id: SeedId
    client_id: SeedId
    opportunity_id: Annotated[str | None, text(100, optional=True)] = None
    start_date: date | None = None
    end_date: date | None = None
    value: Decimal | None = Field(default=None, gt=0, le=1_000_000_000, decimal_places=2)
    status: ContractStatus | None = None
    document_url: SeedText = None


class DocumentSeed(Strict):
    document_id: SeedId
    entity_type: DocumentEntityType
    entity_id: SeedId
    file_name: Annotated[str, text(255)]
    uploaded_by: SeedText = None
    uploaded_at: datetime | None = None
    file_url: SeedText = None


class NoteSeed(Strict):
    note_id: SeedId
    entity_type: NoteEntityType
    entity_id: SeedId
    content: Annotated[str, text(5000)]
    created_by: SeedText = None
    created_at: datetime | None = None


class SeedRows(Strict):
    """Rows added on top of the world template, with their own deterministic ids."""

    client: list[ClientSeed] = Field(default_factory=list, max_length=1000)
    company: list[CompanySeed] = Field(default_factory=list, max_length=1000)
    contact: list[ContactSeed] = Field(default_factory=list, max_length=1000)
    opportunity: list[OpportunitySeed] = Field(default_factory=list, max_length=1000)
    quote: list[QuoteSeed] = Field(default_factory=list, max_length=1000)
    contract: list[ContractSeed] = Field(default_factory=list, max_length=1000)
    document: list[DocumentSeed] = Field(default_factory=list, max_length=1000)
    note: list[NoteSeed] = Field(default_factory=list, max_length=1000)


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
    case_id: str | None = None
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
    episode_id: str
    deleted: bool
