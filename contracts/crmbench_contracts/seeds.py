"""The seed-rows contract: rows an episode or a case adds on top of the world template.

I/O-free (pydantic only), shared by the CRM API, which validates episode seeds with it, and
the corpus, which checks imported seeds against it; it also holds the CRM's entity values
(enums) and its strict text type, so both validate and refuse alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# ---------------------------------------------------------------------------- entity values


class ClientStatus(StrEnum):
    ACTIVE = "Active"
    PROSPECT = "Prospect"
    INACTIVE = "Inactive"


class OpportunityStage(StrEnum):
    PROSPECTING = "Prospecting"
    QUALIFICATION = "Qualification"
    PROPOSAL = "Proposal"
    NEGOTIATION = "Negotiation"
    CLOSED_WON = "Closed-Won"
    CLOSED_LOST = "Closed-Lost"


class QuoteStatus(StrEnum):
    DRAFT = "Draft"
    SENT = "Sent"
    APPROVED = "Approved"
    REJECTED = "Rejected"
    CANCELED = "Canceled"


class ContractStatus(StrEnum):
    ACTIVE = "Active"
    PENDING = "Pending"
    EXPIRED = "Expired"


class CompanyType(StrEnum):
    PARTNER = "Partner"
    VENDOR = "Vendor"
    COMPETITOR = "Competitor"


class DocumentEntityType(StrEnum):
    OPPORTUNITY = "Opportunity"
    CONTRACT = "Contract"
    QUOTE = "Quote"
    CLIENT = "Client"


class NoteEntityType(StrEnum):
    OPPORTUNITY = "Opportunity"
    CLIENT = "Client"
    CONTACT = "Contact"
    QUOTE = "Quote"
    CONTRACT = "Contract"


# ---------------------------------------------------------------------------- strict text
# Refusals carry the CRM API's error codes (values of crm_api.errors.ErrorCode).


@dataclass(frozen=True, eq=False)
class Checked:
    """Annotated metadata: validate with `check` alone, document with `schema`.

    Use as `Annotated[str, text(200)]`; pydantic's own coercion never runs, so "$5,000",
    true or "50%" reach `check` as they were sent and are refused with a precise code.
    """

    check: Callable[[Any], Any]
    schema: dict[str, Any] = field(default_factory=dict)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return dict(self.schema)


def refuse(code: str, message: str, allowed: list[Any] | None = None) -> PydanticCustomError:
    """A validation error that the CRM API renders with `code` (an `ErrorCode` value)."""
    return PydanticCustomError(
        "crm", "{crm_message}", {"crm_code": str(code), "crm_message": message, "allowed": allowed}
    )


def _check_storable(value: str) -> None:
    # Postgres text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8.
    if "\x00" in value:
        raise refuse("TYPE_MISMATCH", "text must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise refuse("TYPE_MISMATCH", "text contains invalid unicode") from None


def text_validator(max_length: int, optional: bool) -> Any:
    """A check of non-blank, storable text of at most `max_length` characters (None if
    `optional`); refuses with TYPE_MISMATCH or BLANK_STRING."""

    def validate(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise refuse("TYPE_MISMATCH", f"expected a string, got {type(value).__name__}")
        _check_storable(value)
        if not value.strip():
            raise refuse("BLANK_STRING", "must not be empty or only whitespace")
        if len(value) > max_length:
            raise refuse("TYPE_MISMATCH", f"must be at most {max_length} characters")
        return value

    return validate


def text(max_length: int = 200, *, optional: bool = False) -> Checked:
    """A strict text field: `Annotated[str, text(200)]`."""
    schema = {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": r"\S"}
    return Checked(text_validator(max_length, optional), schema)


# ---------------------------------------------------------------------------- seed rows


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SeedId = Annotated[str, text(100)]
SeedText = Annotated[str | None, text(5000, optional=True)]
SeedName = Annotated[str, text(200)]


class ClientSeed(_Strict):
    client_id: SeedId
    name: SeedName
    industry: SeedText = None
    email: SeedText = None
    phone: SeedText = None
    address: SeedText = None
    status: ClientStatus = ClientStatus.PROSPECT
    created_date: datetime | None = None
    owner: SeedText = None


class CompanySeed(_Strict):
    company_id: SeedId
    name: SeedName
    type: CompanyType | None = None
    industry: SeedText = None
    address: SeedText = None
    contacts: list[SeedId] = Field(default_factory=list)


class ContactSeed(_Strict):
    contact_id: SeedId
    first_name: SeedName
    last_name: SeedName
    title: SeedText = None
    email: SeedText = None
    phone: SeedText = None
    client_id: SeedId
    notes: SeedText = None


class OpportunitySeed(_Strict):
    opportunity_id: SeedId
    name: SeedName
    client_id: SeedId
    stage: OpportunityStage
    amount: Decimal = Field(gt=0, le=10_000_000, decimal_places=2)
    close_date: date | None = None
    owner: SeedText = None
    probability: int | None = Field(default=None, ge=0, le=100)
    notes: SeedText = None


class QuoteSeed(_Strict):
    quote_id: SeedId
    opportunity_id: SeedId
    version: Annotated[str, text(20)] = "1"
    amount: Decimal = Field(gt=0, le=10_000_000, decimal_places=2)
    status: QuoteStatus = QuoteStatus.DRAFT
    valid_until: date | None = None
    created_date: datetime | None = None
    quote_prefix: SeedText = None


class ContractSeed(_Strict):
    contract_id: SeedId
    client_id: SeedId
    opportunity_id: Annotated[str | None, text(100, optional=True)] = None
    start_date: date | None = None
    end_date: date | None = None
    value: Decimal | None = Field(default=None, gt=0, le=1_000_000_000, decimal_places=2)
    status: ContractStatus | None = None
    document_url: SeedText = None


class DocumentSeed(_Strict):
    document_id: SeedId
    entity_type: DocumentEntityType
    entity_id: SeedId
    file_name: Annotated[str, text(255)]
    uploaded_by: SeedText = None
    uploaded_at: datetime | None = None
    file_url: SeedText = None


class NoteSeed(_Strict):
    note_id: SeedId
    entity_type: NoteEntityType
    entity_id: SeedId
    content: Annotated[str, text(5000)]
    created_by: SeedText = None
    created_at: datetime | None = None


class SeedRows(_Strict):
    """Rows added on top of the world template, with their own deterministic ids."""

    client: list[ClientSeed] = Field(default_factory=list, max_length=1000)
    company: list[CompanySeed] = Field(default_factory=list, max_length=1000)
    contact: list[ContactSeed] = Field(default_factory=list, max_length=1000)
    opportunity: list[OpportunitySeed] = Field(default_factory=list, max_length=1000)
    quote: list[QuoteSeed] = Field(default_factory=list, max_length=1000)
    contract: list[ContractSeed] = Field(default_factory=list, max_length=1000)
    document: list[DocumentSeed] = Field(default_factory=list, max_length=1000)
    note: list[NoteSeed] = Field(default_factory=list, max_length=1000)
