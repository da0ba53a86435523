"""Request and response models of the tools (Create/Update/Public per entity).

Requests refuse unknown fields; every field uses a strict type from `fields`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from crm_api.domain import (
    ClientStatus,
    CompanyType,
    ContractStatus,
    DocumentEntityType,
    NoteEntityType,
    OpportunityStage,
    QuoteStatus,
)
from crm_api.fields import (
    amount,
    date_field,
    email,
    enum_field,
    file_name,
    page_int,
    probability,
    search_bound,
    text,
)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


Id = Annotated[str, text(100)]
OptionalId = Annotated[str | None, text(100, optional=True)]
Name = Annotated[str, text(200)]
OptName = Annotated[str | None, text(200, optional=True)]
OptText = Annotated[str | None, text(2000, optional=True)]
OptShort = Annotated[str | None, text(100, optional=True)]
OptUrl = Annotated[str | None, text(2000, optional=True)]
Content = Annotated[str, text(5000)]
OptEmail = Annotated[str | None, email(optional=True)]
Money = Annotated[Decimal, amount()]
OptMoney = Annotated[Decimal | None, amount(optional=True)]
OptDate = Annotated[date | None, date_field()]
Probability = Annotated[int | None, probability()]
FileName = Annotated[str, file_name()]
Limit = Annotated[int, page_int(1, 50, 20)]
Offset = Annotated[int, page_int(0, 100_000, 0)]
SearchNumber = Annotated[float | None, search_bound()]

ClientStatusField = Annotated[ClientStatus, enum_field(ClientStatus)]
OptClientStatus = Annotated[ClientStatus | None, enum_field(ClientStatus, optional=True)]
StageField = Annotated[OpportunityStage, enum_field(OpportunityStage)]
OptStage = Annotated[OpportunityStage | None, enum_field(OpportunityStage, optional=True)]
OptQuoteStatus = Annotated[QuoteStatus | None, enum_field(QuoteStatus, optional=True)]
OptContractStatus = Annotated[ContractStatus | None, enum_field(ContractStatus, optional=True)]
OptCompanyType = Annotated[CompanyType | None, enum_field(CompanyType, optional=True)]
DocumentEntity = Annotated[DocumentEntityType, enum_field(DocumentEntityType)]
OptDocumentEntity = Annotated[
    DocumentEntityType | None, enum_field(DocumentEntityType, optional=True)
]
NoteEntity = Annotated[NoteEntityType, enum_field(NoteEntityType)]
OptNoteEntity = Annotated[NoteEntityType | None, enum_field(NoteEntityType, optional=True)]


# ---------------------------------------------------------------- public records


class ClientOut(Out):
    client_id: str
    name: str
    industry: str | None
    email: str | None
    phone: str | None
    address: str | None
    status: ClientStatus
    created_date: datetime | None
    owner: str | None


class ContactOut(Out):
    contact_id: str
    first_name: str
    last_name: str
    title: str | None
    email: str | None
    phone: str | None
    client_id: str
    notes: str | None


class OpportunityOut(Out):
    opportunity_id: str
    name: str
    client_id: str
    stage: OpportunityStage
    amount: float
    close_date: date | None
    owner: str | None
    probability: int | None
    notes: str | None


class QuoteOut(Out):
    quote_id: str
    opportunity_id: str
    version: str
    amount: float
    status: QuoteStatus
    valid_until: date | None
    created_date: datetime | None
    quote_prefix: str | None


class ContractOut(Out):
    contract_id: str
    client_id: str
    opportunity_id: str | None
    start_date: date | None
    end_date: date | None
    value: float | None
    status: ContractStatus | None
    document_url: str | None


class CompanyOut(Out):
    company_id: str
    name: str
    type: CompanyType | None
    industry: str | None
    address: str | None
    contacts: list[str]


class DocumentOut(Out):
    document_id: str
    entity_type: DocumentEntityType
    entity_id: str
    file_name: str
    uploaded_by: str | None
    uploaded_at: datetime | None
    file_url: str | None


class NoteOut(Out):
    note_id: str
    entity_type: NoteEntityType
    entity_id: str
    content: str
    created_by: str | None
    created_at: datetime | None


class PageInfo(Out):
    total: int = Field(description="How many records match in all.")
    limit: int
    offset: int
    has_more: bool = Field(description="True when more matches follow this page.")


class ClientPage(PageInfo):
    items: list[ClientOut]


class ContactPage(PageInfo):
    items: list[ContactOut]


class OpportunityPage(PageInfo):
    items: list[OpportunityOut]


class QuotePage(PageInfo):
    items: list[QuoteOut]


class ContractPage(PageInfo):
    items: list[ContractOut]


class CompanyPage(PageInfo):
    items: list[CompanyOut]


class DocumentPage(PageInfo):
    items: list[DocumentOut]


class NotePage(PageInfo):
    items: list[NoteOut]


# ---------------------------------------------------------------- creates


class CreateClient(Request):
    name: Name
    email: OptEmail = None
    phone: OptShort = None
    address: OptText = None
    industry: OptShort = None
    status: OptClientStatus = None
    owner: OptShort = None


class CreateContact(Request):
    first_name: Name
    last_name: Name
    client_id: Id
    title: OptShort = None
    email: OptEmail = None
    phone: OptShort = None
    notes: OptText = None


class CreateOpportunity(Request):
    name: Name
    client_id: Id
    amount: Money
    stage: StageField
    close_date: OptDate = None
    probability: Probability = None
    owner: OptShort = None
    notes: OptText = None


class CreateQuote(Request):
    opportunity_id: Id
    amount: Money
    status: OptQuoteStatus = None
    valid_until: OptDate = None
    quote_prefix: OptShort = None


class CreateContract(Request):
    client_id: Id
    opportunity_id: OptionalId = None
    start_date: OptDate = None
    end_date: OptDate = None
    value: OptMoney = None
    status: OptContractStatus = None
    document_url: OptUrl = None


class UploadDocument(Request):
    entity_type: DocumentEntity
    entity_id: Id
    file_name: FileName
    file_url: OptUrl = None


class AddNote(Request):
    entity_type: NoteEntity
    entity_id: Id
    content: Content


# ---------------------------------------------------------------- modifies


class ModifyClient(Request):
    client_id: Id
    name: OptName = None
    industry: OptShort = None
    email: OptEmail = None
    phone: OptShort = None
    address: OptText = None
    status: OptClientStatus = None
    owner: OptShort = None


class ModifyContact(Request):
    contact_id: Id
    first_name: OptName = None
    last_name: OptName = None
    title: OptShort = None
    email: OptEmail = None
    phone: OptShort = None
    client_id: OptionalId = None
    notes: OptText = None


class ModifyOpportunity(Request):
    opportunity_id: Id
    name: OptName = None
    stage: OptStage = None
    amount: OptMoney = None
    close_date: OptDate = None
    probability: Probability = None
    owner: OptShort = None
    notes: OptText = None


class ModifyQuote(Request):
    quote_id: Id
    amount: OptMoney = None
    status: OptQuoteStatus = None
    valid_until: OptDate = None
    quote_prefix: OptShort = None


class OpportunityRef(Request):
    opportunity_id: Id


class QuoteRef(Request):
    quote_id: Id


class CloneOpportunity(Request):
    opportunity_id: Id
    name: OptName = Field(default=None, description="Name of the copy; defaults to the original's.")


class Deleted(Out):
    deleted: bool
    entity_type: str
    entity_id: str
    cascaded: dict[str, int] = Field(description="Dependent records deleted with it, per table.")


# ---------------------------------------------------------------- searches


class ClientCriteria(Request):
    name: OptName = Field(default=None, description="Substring of the name, any case.")
    email: OptShort = Field(default=None, description="Exact email, any case.")
    status: OptClientStatus = None
    industry: OptShort = Field(default=None, description="Substring of the industry, any case.")
    owner: OptShort = None


class ContactCriteria(Request):
    first_name: OptName = Field(default=None, description="Substring, any case.")
    last_name: OptName = Field(default=None, description="Substring, any case.")
    email: OptShort = Field(default=None, description="Exact email, any case.")
    title: OptShort = Field(default=None, description="Substring, any case.")
    client_id: OptionalId = None


class OpportunityCriteria(Request):
    name: OptName = Field(default=None, description="Substring of the name, any case.")
    client_id: OptionalId = None
    stage: OptStage = None
    owner: OptShort = None
    min_amount: SearchNumber = None
    max_amount: SearchNumber = None
    close_date_from: OptDate = None
    close_date_to: OptDate = None


class QuoteCriteria(Request):
    opportunity_id: OptionalId = None
    status: OptQuoteStatus = None
    quote_prefix: OptShort = None
    min_amount: SearchNumber = None
    max_amount: SearchNumber = None


class ContractCriteria(Request):
    client_id: OptionalId = None
    opportunity_id: OptionalId = None
    status: OptContractStatus = None


class CompanyCriteria(Request):
    name: OptName = Field(default=None, description="Substring of the name, any case.")
    type: OptCompanyType = None
    industry: OptShort = Field(default=None, description="Substring, any case.")


class ClientSearch(Request):
    criteria: ClientCriteria = Field(default_factory=ClientCriteria)
    limit: Limit = 20
    offset: Offset = 0


class ContactSearch(Request):
    criteria: ContactCriteria = Field(default_factory=ContactCriteria)
    limit: Limit = 20
    offset: Offset = 0


class OpportunitySearch(Request):
    criteria: OpportunityCriteria = Field(default_factory=OpportunityCriteria)
    limit: Limit = 20
    offset: Offset = 0


class QuoteSearch(Request):
    criteria: QuoteCriteria = Field(default_factory=QuoteCriteria)
    limit: Limit = 20
    offset: Offset = 0


class ContractSearch(Request):
    criteria: ContractCriteria = Field(default_factory=ContractCriteria)
    limit: Limit = 20
    offset: Offset = 0


class CompanySearch(Request):
    criteria: CompanyCriteria = Field(default_factory=CompanyCriteria)
    limit: Limit = 20
    offset: Offset = 0


class ListPage(Request):
    limit: Limit = 20
    offset: Offset = 0


class ListDocuments(Request):
    entity_type: OptDocumentEntity = None
    entity_id: OptionalId = None
    limit: Limit = 20
    offset: Offset = 0


class ListNotes(Request):
    entity_type: OptNoteEntity = None
    entity_id: OptionalId = None
    limit: Limit = 20
    offset: Offset = 0


# ---------------------------------------------------------------- details and summaries


class OpportunityView(OpportunityOut):
    client: ClientOut
    quotes: list[QuoteOut]
    contracts: list[ContractOut]
    notes_attached: list[NoteOut]
    documents: list[DocumentOut]


class QuoteDetail(QuoteOut):
    opportunity_name: str
    opportunity_stage: OpportunityStage
    opportunity_amount: float
    client_id: str
    client_name: str
    discount_percent: float = Field(description="How far the quote is below the deal amount.")


class CompareQuotesRequest(Request):
    quote_ids: Annotated[list[Id], Field(min_length=2, max_length=10)] | None = Field(
        default=None, description="Quotes to compare (2 to 10). Or give opportunity_id."
    )
    opportunity_id: OptionalId = Field(
        default=None, description="Compare every quote of this opportunity."
    )


class QuoteComparisonRow(Out):
    quote_id: str
    opportunity_id: str
    version: str
    amount: float
    status: QuoteStatus
    valid_until: date | None
    quote_prefix: str | None


class QuoteComparison(Out):
    quotes: list[QuoteComparisonRow]
    lowest_quote_id: str
    highest_quote_id: str
    amount_spread: float = Field(description="Highest amount minus lowest amount.")


class CompareQuoteDetailsRequest(Request):
    quote_ids: Annotated[list[Id], Field(min_length=2, max_length=2)] = Field(
        description="Exactly two quote ids."
    )


class FieldDifference(Out):
    field: str
    values: list[Any]


class QuoteDetailComparison(Out):
    quotes: list[QuoteDetail]
    differences: list[FieldDifference]
    same: list[str] = Field(description="Fields equal in both quotes.")


class SummarizeOpportunitiesRequest(Request):
    client_id: OptionalId = None
    owner: OptShort = None
    stage: OptStage = None


class StageSummary(Out):
    stage: OpportunityStage
    count: int
    total_amount: float


class OpportunitySummary(Out):
    count: int
    total_amount: float
    average_amount: float
    weighted_pipeline: float = Field(
        description="Sum of amount x probability/100 over open opportunities."
    )
    by_stage: list[StageSummary]


class NoArguments(Request):
    pass


class PrefixCount(Out):
    quote_prefix: str | None
    count: int


class QuotePrefixes(Out):
    prefixes: list[PrefixCount]


class EntityName(StrEnum):
    CLIENT = "client"
    CONTACT = "contact"
    OPPORTUNITY = "opportunity"
    QUOTE = "quote"
    CONTRACT = "contract"
    COMPANY = "company"
    DOCUMENT = "document"
    NOTE = "note"


# Fields each entity's records can be counted by.
GROUPABLE_FIELDS: dict[str, list[str]] = {
    "client": ["status", "industry", "owner"],
    "contact": ["client_id", "title"],
    "opportunity": ["stage", "owner", "client_id"],
    "quote": ["status", "quote_prefix", "opportunity_id"],
    "contract": ["status", "client_id"],
    "company": ["type", "industry"],
    "document": ["entity_type", "uploaded_by"],
    "note": ["entity_type", "created_by"],
}


class SummarizeCounts(Request):
    entity: Annotated[EntityName, enum_field(EntityName)]
    group_by: OptShort = Field(
        default=None,
        description="Optional field to count by, e.g. status for client, stage for opportunity.",
    )


class GroupCount(Out):
    value: str | None
    count: int


class CountSummary(Out):
    entity: str
    group_by: str | None
    total: int
    groups: list[GroupCount]
