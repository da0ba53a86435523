"""Generic read tools over every entity: list_<entities> pages and summarize_counts."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from crm_api.context import ToolContext
from crm_api.errors import CrmError
from crm_api.schemas import (
    GROUPABLE_FIELDS,
    ClientPage,
    CompanyPage,
    ContactPage,
    ContractPage,
    CountSummary,
    DocumentPage,
    ListDocuments,
    ListNotes,
    ListPage,
    NotePage,
    OpportunityPage,
    QuotePage,
    SummarizeCounts,
)
from crm_api.tools.common import page, repo
from crm_api.tools.registry import Handler, ToolKind, tool
from crmbench_contracts.api_errors import ErrorCode

# tool name -> (table, plural noun, request model, response model)
_LISTS: dict[str, tuple[str, str, type[BaseModel], type[BaseModel]]] = {
    "list_clients": ("client", "clients", ListPage, ClientPage),
    "list_contacts": ("contact", "contacts", ListPage, ContactPage),
    "list_opportunities": ("opportunity", "opportunities", ListPage, OpportunityPage),
    "list_quotes": ("quote", "quotes", ListPage, QuotePage),
    "list_contracts": ("contract", "contracts", ListPage, ContractPage),
    "list_companies": ("company", "companies", ListPage, CompanyPage),
    "list_documents": ("document", "documents", ListDocuments, DocumentPage),
    "list_notes": ("note", "notes", ListNotes, NotePage),
}


def _list_handler(table: str, noun: str, filtered: bool) -> Handler:
    async def handler(ctx: ToolContext, args: Any) -> dict[str, Any]:
        rows = repo(ctx, table)
        conditions: list[sa.ColumnElement[bool]] = []
        if filtered:
            if args.entity_type is not None:
                conditions.append(rows.table.c.entity_type == args.entity_type.value)
            if args.entity_id is not None:
                conditions.append(rows.table.c.entity_id == args.entity_id)
        total, found = await rows.page(conditions, limit=args.limit, offset=args.offset)
        return page(total, found, args.limit, args.offset)

    filters = (
        " Optional filters: entity_type and entity_id (what the records are attached to)."
        if filtered
        else ""
    )
    handler.__doc__ = (
        f"List {noun}, one page at a time, in id order, with the total count.{filters}\n"
        "Use the matching search tool to find records by name or other criteria.\n"
        'Example: {"limit": 20, "offset": 0}'
    )
    return handler


for _name, (_table, _noun, _request, _response) in _LISTS.items():
    tool(_name, kind=ToolKind.READ, request=_request, response=_response, tag="lists")(
        _list_handler(_table, _noun, filtered=_request is not ListPage)
    )


@tool(
    "summarize_counts",
    kind=ToolKind.READ,
    request=SummarizeCounts,
    response=CountSummary,
    tag="lists",
)
async def summarize_counts(ctx: ToolContext, args: SummarizeCounts) -> dict[str, Any]:
    """Count the records of an entity, optionally grouped by one field.

    entity is one of client, contact, opportunity, quote, contract, company, document,
    note. group_by per entity: client status/industry/owner; contact client_id/title;
    opportunity stage/owner/client_id; quote status/quote_prefix/opportunity_id; contract
    status/client_id; company type/industry; document entity_type/uploaded_by; note
    entity_type/created_by.
    Example: {"entity": "opportunity", "group_by": "stage"}
    """
    entity = args.entity.value
    allowed = GROUPABLE_FIELDS[entity]
    if args.group_by is not None and args.group_by not in allowed:
        raise CrmError(
            ErrorCode.INVALID_ENUM,
            f"{entity} records cannot be grouped by {args.group_by!r}",
            field="group_by",
            allowed=allowed,
        )
    groups = await repo(ctx, entity).count_by(args.group_by)
    total = sum(n for _, n in groups)
    return {
        "entity": entity,
        "group_by": args.group_by,
        "total": total,
        "groups": [] if args.group_by is None else [{"value": v, "count": n} for v, n in groups],
    }
