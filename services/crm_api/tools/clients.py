"""Client tools: create, modify and search accounts and prospects."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from crm_api.context import ToolContext
from crm_api.domain import ClientStatus
from crm_api.errors import CrmError
from crm_api.repository import contains, equal_any_case, new_id, public
from crm_api.schemas import ClientOut, ClientPage, ClientSearch, CreateClient, ModifyClient
from crm_api.tools.common import changes_of, page, repo, require
from crm_api.tools.registry import ToolKind, tool
from crmbench_contracts.api_errors import ErrorCode


async def _ensure_email_free(ctx: ToolContext, email: str, own_id: str | None = None) -> None:
    clients = repo(ctx, "client")
    conditions = [equal_any_case(clients.table.c.email, email)]
    if own_id is not None:
        conditions.append(clients.pk != own_id)
    if await clients.where(*conditions):
        raise CrmError(
            ErrorCode.DUPLICATE_UNIQUE_FIELD,
            f"A client with email {email!r} already exists (emails are unique, any case). "
            "Find it with client_search and use that client instead of creating another.",
            field="email",
            status_code=409,
        )


@tool(
    "create_new_client",
    kind=ToolKind.WRITE,
    request=CreateClient,
    response=ClientOut,
    tag="clients",
)
async def create_new_client(ctx: ToolContext, args: CreateClient) -> dict[str, Any]:
    """Create a client (an account or prospect).

    Rules: name is required; email, when given, must be well formed and not used by any
    other client (case-insensitive) - if it is, search for the existing client and use it.
    status is one of Active, Prospect, Inactive (default Prospect). owner defaults to you.
    Example: {"name": "Acme Corporation", "email": "ops@acme.com", "status": "Active"}
    """
    if args.email is not None:
        await _ensure_email_free(ctx, args.email)
    row = await repo(ctx, "client").insert(
        {
            "client_id": new_id(),
            "name": args.name,
            "email": args.email,
            "phone": args.phone,
            "address": args.address,
            "industry": args.industry,
            "status": (args.status or ClientStatus.PROSPECT).value,
            "owner": args.owner or ctx.episode.actor_name,
            "created_date": ctx.episode.now,
        }
    )
    return public(row)


@tool("modify_client", kind=ToolKind.WRITE, request=ModifyClient, response=ClientOut, tag="clients")
async def modify_client(ctx: ToolContext, args: ModifyClient) -> dict[str, Any]:
    """Update fields of an existing client, identified by client_id.

    Only the fields you send change; unknown fields are refused. Email must stay unique.
    Example: {"client_id": "<id from client_search>", "status": "Active"}
    """
    await require(ctx, "client", args.client_id, "client_id")
    values = changes_of(args, "client_id", required=("name", "status"))
    if values.get("email") is not None:
        await _ensure_email_free(ctx, values["email"], own_id=args.client_id)
    if "status" in values:
        values["status"] = values["status"].value
    return public(await repo(ctx, "client").update(args.client_id, values))


@tool("client_search", kind=ToolKind.READ, request=ClientSearch, response=ClientPage, tag="clients")
async def client_search(ctx: ToolContext, args: ClientSearch) -> dict[str, Any]:
    """Find clients by typed criteria; returns one page of matches and the total count.

    Criteria (all optional, combined with AND): name (substring, any case), email (exact,
    any case), status, industry (substring), owner. Use it to get a client_id from a name.
    Example: {"criteria": {"name": "acme"}, "limit": 10}
    """
    clients = repo(ctx, "client")
    c = clients.table.c
    crit = args.criteria
    conditions: list[sa.ColumnElement[bool]] = []
    if crit.name is not None:
        conditions.append(contains(c.name, crit.name))
    if crit.email is not None:
        conditions.append(equal_any_case(c.email, crit.email))
    if crit.status is not None:
        conditions.append(c.status == crit.status.value)
    if crit.industry is not None:
        conditions.append(contains(c.industry, crit.industry))
    if crit.owner is not None:
        conditions.append(c.owner == crit.owner)
    total, rows = await clients.page(
        conditions, limit=args.limit, offset=args.offset, order_by=[c.name.collate("C")]
    )
    return page(total, rows, args.limit, args.offset)
