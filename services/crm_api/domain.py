"""Domain vocabulary of the CRM: enums, limits and roles shared by schemas, rules and the world."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Final

from crmbench_contracts import seeds

# The entity values are the seed-rows contract's (shared with the corpus); the CRM's too.
ClientStatus = seeds.ClientStatus
OpportunityStage = seeds.OpportunityStage
QuoteStatus = seeds.QuoteStatus
ContractStatus = seeds.ContractStatus
CompanyType = seeds.CompanyType
DocumentEntityType = seeds.DocumentEntityType
NoteEntityType = seeds.NoteEntityType


class ActorRole(StrEnum):
    SALES_REP = "sales_rep"
    MANAGER = "manager"


OPEN_STAGES: Final = frozenset(
    {
        OpportunityStage.PROSPECTING,
        OpportunityStage.QUALIFICATION,
        OpportunityStage.PROPOSAL,
        OpportunityStage.NEGOTIATION,
    }
)
CLOSED_STAGES: Final = frozenset({OpportunityStage.CLOSED_WON, OpportunityStage.CLOSED_LOST})
FINAL_QUOTE_STATUSES: Final = frozenset(
    {QuoteStatus.APPROVED, QuoteStatus.REJECTED, QuoteStatus.CANCELED}
)

MAX_AMOUNT: Final = 10_000_000
# A sales rep may approve a quote at most this far below its opportunity's amount.
SALES_REP_MAX_DISCOUNT: Final = 0.20

ALLOWED_FILE_EXTENSIONS: Final = frozenset(
    {
        "pdf",
        "doc",
        "docx",
        "xls",
        "xlsx",
        "ppt",
        "pptx",
        "odt",
        "ods",
        "odp",
        "rtf",
        "txt",
        "csv",
        "md",
        "json",
        "xml",
        "png",
        "jpg",
        "jpeg",
        "gif",
        "bmp",
        "tiff",
        "webp",
        "svg",
    }
)

# The date the world data set describes; an episode without its own "today" uses it.
WORLD_DATE: Final = date(2025, 11, 12)

# Entity table names in the order rows must be inserted (parents before children).
ENTITY_TABLES: Final = (
    "client",
    "company",
    "contact",
    "opportunity",
    "quote",
    "contract",
    "document",
    "note",
)

PRIMARY_KEYS: Final = {
    "client": "client_id",
    "company": "company_id",
    "contact": "contact_id",
    "opportunity": "opportunity_id",
    "quote": "quote_id",
    "contract": "contract_id",
    "document": "document_id",
    "note": "note_id",
}

# Entity-type names used by notes and documents, mapped to their tables.
ENTITY_TYPE_TABLES: Final = {
    "Client": "client",
    "Contact": "contact",
    "Opportunity": "opportunity",
    "Quote": "quote",
    "Contract": "contract",
}


def next_quote_stages(status: QuoteStatus) -> list[QuoteStatus]:
    """Quote statuses reachable from `status` in one call."""
    if status == QuoteStatus.DRAFT:
        return [QuoteStatus.SENT, QuoteStatus.CANCELED]
    if status == QuoteStatus.SENT:
        return [QuoteStatus.APPROVED, QuoteStatus.REJECTED, QuoteStatus.CANCELED]
    return []


def next_opportunity_stages(stage: OpportunityStage) -> list[OpportunityStage]:
    """Stages reachable from `stage` in one call, before the approved-quote check."""
    if stage in CLOSED_STAGES:
        return []
    reachable = [s for s in OPEN_STAGES if s != stage]
    reachable.append(OpportunityStage.CLOSED_LOST)
    if stage == OpportunityStage.NEGOTIATION:
        reachable.append(OpportunityStage.CLOSED_WON)
    order = list(OpportunityStage)
    return sorted(reachable, key=order.index)
