"""Contact tools: people at a client."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from crm_api.context import ToolContext
from crm_api.repository import contains, equal_any_case, new_id, public
from crm_api.schemas import ContactOut, ContactPage, ContactSearch, CreateContact, ModifyContact
from crm_api.tools.common import changes_of, page, reference, repo, require
from crm_api.tools.registry import ToolKind, tool


@tool(
    "create_new_contact",
    kind=ToolKind.WRITE,
    request=CreateContact,
    response=ContactOut,
    tag="contacts",
)
async def create_new_contact(ctx: ToolContext, args: CreateContact) -> dict[str, Any]:
    """Create a contact (a person) at an existing client.

    Rules: first_name, last_name and client_id are required; the client must exist (look
    it up with client_search first); email, when given, must be well formed.
    Example: {"first_name": "Jane", "last_name": "Doe", "client_id": "<id>",
    "email": "jane.doe@acme.com", "title": "CFO"}
    """
    await reference(ctx, "client", args.client_id, "client_id")
    row = await repo(ctx, "contact").insert({"contact_id": new_id(), **args.model_dump()})
    return public(row)


@tool(
    "modify_contact",
    kind=ToolKind.WRITE,
    request=ModifyContact,
    response=ContactOut,
    tag="contacts",
)
async def modify_contact(ctx: ToolContext, args: ModifyContact) -> dict[str, Any]:
    """Update fields of an existing contact, identified by contact_id.

    Only the fields you send change; unknown fields are refused. A new client_id must exist.
    Example: {"contact_id": "<id from contact_search>", "title": "Senior VP Sales"}
    """
    await require(ctx, "contact", args.contact_id, "contact_id")
    values = changes_of(args, "contact_id", required=("first_name", "last_name", "client_id"))
    if "client_id" in values:
        await reference(ctx, "client", values["client_id"], "client_id")
    return public(await repo(ctx, "contact").update(args.contact_id, values))


@tool(
    "contact_search",
    kind=ToolKind.READ,
    request=ContactSearch,
    response=ContactPage,
    tag="contacts",
)
async def contact_search(ctx: ToolContext, args: ContactSearch) -> dict[str, Any]:
    """Find contacts by typed criteria; returns one page of matches and the total count.

    Criteria (optional, combined with AND): first_name, last_name, title (substrings, any
    case), email (exact, any case), client_id.
    Example: {"criteria": {"last_name": "doe", "client_id": "<id>"}}
    """
    contacts = repo(ctx, "contact")
    c = contacts.table.c
    crit = args.criteria
    conditions: list[sa.ColumnElement[bool]] = []
    if crit.first_name is not None:
        conditions.append(contains(c.first_name, crit.first_name))
    if crit.last_name is not None:
        conditions.append(contains(c.last_name, crit.last_name))
    if crit.title is not None:
        conditions.append(contains(c.title, crit.title))
    if crit.email is not None:
        conditions.append(equal_any_case(c.email, crit.email))
    if crit.client_id is not None:
        conditions.append(c.client_id == crit.client_id)
    order = [c.last_name.collate("C"), c.first_name.collate("C")]
    total, rows = await contacts.page(
        conditions, limit=args.limit, offset=args.offset, order_by=order
    )
    return page(total, rows, args.limit, args.offset)
