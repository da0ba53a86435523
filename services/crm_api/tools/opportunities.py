"""Opportunity tools: the sales pipeline and its stage rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from crm_api.context import ToolContext
from crm_api.domain import (
    OPEN_STAGES,
    OpportunityStage,
    QuoteStatus,
    next_opportunity_stages,
)
from crm_api.errors import CrmError
from crm_api.repository import contains, new_id, public
from crm_api.schemas import (
    CloneOpportunity,
    CreateOpportunity,
    Deleted,
    ModifyOpportunity,
    OpportunityOut,
    OpportunityPage,
    OpportunityRef,
    OpportunitySearch,
    OpportunitySummary,
    OpportunityView,
    SummarizeOpportunitiesRequest,
)
from crm_api.tools.common import (
    changes_of,
    ensure_manager,
    ensure_not_past,
    ensure_open,
    page,
    reference,
    repo,
    require,
)
from crm_api.tools.registry import ToolKind, tool
from crmbench_contracts.api_errors import ErrorCode

_OPEN_ORDERED = [s.value for s in OpportunityStage if s in OPEN_STAGES]


async def _has_approved_quote(ctx: ToolContext, opportunity_id: str) -> bool:
    quotes = repo(ctx, "quote")
    c = quotes.table.c
    rows = await quotes.where(
        c.opportunity_id == opportunity_id, c.status == QuoteStatus.APPROVED.value
    )
    return bool(rows)


async def check_stage_change(
    ctx: ToolContext, opportunity: dict[str, Any], target: OpportunityStage
) -> None:
    """Enforces the stage machine of domain.md for a move of `opportunity` to `target`."""
    current = OpportunityStage(opportunity["stage"])
    if target == current:
        return
    allowed = next_opportunity_stages(current)
    if target not in allowed:
        raise CrmError(
            ErrorCode.INVALID_STAGE_TRANSITION,
            f"Cannot move from {current.value} to {target.value}. Closed-Won is reached only "
            "from Negotiation with an Approved quote.",
            field="stage",
            allowed=[s.value for s in allowed],
            status_code=409,
        )
    if target == OpportunityStage.CLOSED_WON and not await _has_approved_quote(
        ctx, opportunity["opportunity_id"]
    ):
        raise CrmError(
            ErrorCode.INVALID_STAGE_TRANSITION,
            "Cannot mark the opportunity Closed-Won: it has no Approved quote. Get a quote "
            "approved first (create_quote, then modify_quote to Sent and Approved).",
            field="stage",
            allowed=[s.value for s in allowed if s != OpportunityStage.CLOSED_WON],
            status_code=409,
        )


@tool(
    "create_new_opportunity",
    kind=ToolKind.WRITE,
    request=CreateOpportunity,
    response=OpportunityOut,
    tag="opportunities",
)
async def create_new_opportunity(ctx: ToolContext, args: CreateOpportunity) -> dict[str, Any]:
    """Create a sales opportunity (a deal) for an existing client.

    Rules: name, client_id, amount and stage are required. amount is a JSON number,
    0 < amount <= 10,000,000 (no currency symbols or commas). stage is exactly one of
    Prospecting, Qualification, Proposal, Negotiation (a new deal starts open).
    probability is an integer 0-100 (no "%"). close_date is YYYY-MM-DD and not in the past.
    The client must exist: look it up with client_search first.
    Example: {"name": "Acme - Q4 renewal", "client_id": "<id>", "amount": 50000,
    "stage": "Prospecting", "close_date": "2026-03-31", "probability": 20}
    """
    await reference(ctx, "client", args.client_id, "client_id")
    if args.stage not in OPEN_STAGES:
        raise CrmError(
            ErrorCode.INVALID_STAGE_TRANSITION,
            f"A new opportunity cannot start as {args.stage.value}; create it in an open "
            "stage and move it forward.",
            field="stage",
            allowed=_OPEN_ORDERED,
            status_code=409,
        )
    ensure_not_past(ctx, args.close_date, "close_date")
    row = await repo(ctx, "opportunity").insert(
        {
            "opportunity_id": new_id(),
            "name": args.name,
            "client_id": args.client_id,
            "stage": args.stage.value,
            "amount": args.amount,
            "close_date": args.close_date,
            "probability": args.probability,
            "owner": args.owner or ctx.episode.actor_name,
            "notes": args.notes,
        }
    )
    return public(row)


@tool(
    "modify_opportunity",
    kind=ToolKind.WRITE,
    request=ModifyOpportunity,
    response=OpportunityOut,
    tag="opportunities",
)
async def modify_opportunity(ctx: ToolContext, args: ModifyOpportunity) -> dict[str, Any]:
    """Update an open opportunity: stage, amount, close_date, probability, owner, name, notes.

    Stage rules: an open deal (Prospecting, Qualification, Proposal, Negotiation) may move
    to any other open stage or to Closed-Lost. Closed-Won only from Negotiation, and only
    when the deal has an Approved quote. A closed deal (Closed-Won, Closed-Lost) cannot be
    modified. Types are strict: amount a number, probability an integer 0-100, close_date
    YYYY-MM-DD and not in the past. Unknown fields are refused.
    Example: {"opportunity_id": "<id>", "stage": "Negotiation", "probability": 75}
    """
    opportunity = await require(ctx, "opportunity", args.opportunity_id, "opportunity_id")
    values = changes_of(args, "opportunity_id", required=("name", "stage", "amount"))
    ensure_open(opportunity, "modified")
    if "stage" in values:
        await check_stage_change(ctx, opportunity, values["stage"])
        values["stage"] = values["stage"].value
    ensure_not_past(ctx, values.get("close_date"), "close_date")
    return public(await repo(ctx, "opportunity").update(args.opportunity_id, values))


@tool(
    "delete_opportunity",
    kind=ToolKind.WRITE,
    request=OpportunityRef,
    response=Deleted,
    tag="opportunities",
)
async def delete_opportunity(ctx: ToolContext, args: OpportunityRef) -> dict[str, Any]:
    """Delete an opportunity with its quotes and the notes and documents attached to them.

    Rules: only a manager may delete records (a sales rep gets PERMISSION_DENIED: ask a
    manager). An opportunity referenced by a contract cannot be deleted.
    Example: {"opportunity_id": "<id>"}
    """
    await require(ctx, "opportunity", args.opportunity_id, "opportunity_id")
    ensure_manager(ctx, "delete records")
    contracts = repo(ctx, "contract")
    linked = await contracts.where(contracts.table.c.opportunity_id == args.opportunity_id)
    if linked:
        raise CrmError(
            ErrorCode.HAS_DEPENDENTS,
            f"Opportunity is referenced by {len(linked)} contract(s) "
            f"({', '.join(r['contract_id'] for r in linked)}); it cannot be deleted.",
            field="opportunity_id",
            status_code=409,
        )
    quotes = repo(ctx, "quote")
    quote_ids = [
        r["quote_id"]
        for r in await quotes.where(quotes.table.c.opportunity_id == args.opportunity_id)
    ]
    cascaded = await delete_attachments(
        ctx, {"Opportunity": [args.opportunity_id], "Quote": quote_ids}
    )
    await repo(ctx, "opportunity").delete(args.opportunity_id)  # quotes go by ON DELETE CASCADE
    cascaded["quote"] = len(quote_ids)
    return {
        "deleted": True,
        "entity_type": "Opportunity",
        "entity_id": args.opportunity_id,
        "cascaded": cascaded,
    }


async def delete_attachments(ctx: ToolContext, targets: dict[str, list[str]]) -> dict[str, int]:
    """Deletes notes and documents attached to the given records; returns counts per table."""
    counts = {"note": 0, "document": 0}
    for table in counts:
        attached = repo(ctx, table)
        c = attached.table.c
        for entity_type, ids in targets.items():
            if not ids:
                continue
            stmt = sa.delete(attached.table).where(
                c.entity_type == entity_type, c.entity_id.in_(ids)
            )
            counts[table] += (await ctx.conn.execute(stmt)).rowcount
    return counts


@tool(
    "clone_opportunity",
    kind=ToolKind.WRITE,
    request=CloneOpportunity,
    response=OpportunityOut,
    tag="opportunities",
)
async def clone_opportunity(ctx: ToolContext, args: CloneOpportunity) -> dict[str, Any]:
    """Create a copy of an opportunity with a new opportunity_id (quotes are not copied).

    Every field is copied as it is; give name to name the copy differently.
    Example: {"opportunity_id": "<id>", "name": "Acme - 2026 renewal"}
    """
    original = await reference(ctx, "opportunity", args.opportunity_id, "opportunity_id")
    copy = dict(original, opportunity_id=new_id())
    if args.name is not None:
        copy["name"] = args.name
    return public(await repo(ctx, "opportunity").insert(copy))


@tool(
    "opportunity_search",
    kind=ToolKind.READ,
    request=OpportunitySearch,
    response=OpportunityPage,
    tag="opportunities",
)
async def opportunity_search(ctx: ToolContext, args: OpportunitySearch) -> dict[str, Any]:
    """Find opportunities by typed criteria; returns one page of matches and the total count.

    Criteria (optional, AND): name (substring, any case), client_id, stage (exact value),
    owner, min_amount, max_amount, close_date_from, close_date_to (YYYY-MM-DD).
    Example: {"criteria": {"stage": "Qualification", "min_amount": 10000}}
    """
    opportunities = repo(ctx, "opportunity")
    c = opportunities.table.c
    crit = args.criteria
    conditions: list[sa.ColumnElement[bool]] = []
    if crit.name is not None:
        conditions.append(contains(c.name, crit.name))
    if crit.client_id is not None:
        conditions.append(c.client_id == crit.client_id)
    if crit.stage is not None:
        conditions.append(c.stage == crit.stage.value)
    if crit.owner is not None:
        conditions.append(c.owner == crit.owner)
    if crit.min_amount is not None:
        conditions.append(c.amount >= Decimal(str(crit.min_amount)))
    if crit.max_amount is not None:
        conditions.append(c.amount <= Decimal(str(crit.max_amount)))
    if crit.close_date_from is not None:
        conditions.append(c.close_date >= crit.close_date_from)
    if crit.close_date_to is not None:
        conditions.append(c.close_date <= crit.close_date_to)
    total, rows = await opportunities.page(
        conditions, limit=args.limit, offset=args.offset, order_by=[c.name.collate("C")]
    )
    return page(total, rows, args.limit, args.offset)


@tool(
    "opportunity_details",
    kind=ToolKind.READ,
    request=OpportunityRef,
    response=OpportunityOut,
    tag="opportunities",
)
async def opportunity_details(ctx: ToolContext, args: OpportunityRef) -> dict[str, Any]:
    """Return one opportunity's record by opportunity_id.

    Example: {"opportunity_id": "<id>"}
    """
    return public(await require(ctx, "opportunity", args.opportunity_id, "opportunity_id"))


@tool(
    "view_opportunity_details",
    kind=ToolKind.READ,
    request=OpportunityRef,
    response=OpportunityView,
    tag="opportunities",
)
async def view_opportunity_details(ctx: ToolContext, args: OpportunityRef) -> dict[str, Any]:
    """Show an opportunity with its client, quotes, contracts, notes and documents.

    Use it before changing a deal to see its stage, its quotes' statuses and what is attached.
    Example: {"opportunity_id": "<id>"}
    """
    opp = await require(ctx, "opportunity", args.opportunity_id, "opportunity_id")
    client = await repo(ctx, "client").get(opp["client_id"])
    quotes = repo(ctx, "quote")
    contracts = repo(ctx, "contract")
    notes = repo(ctx, "note")
    documents = repo(ctx, "document")
    view = public(opp)
    view["client"] = public(client or {})
    view["quotes"] = [
        public(r)
        for r in await quotes.where(
            quotes.table.c.opportunity_id == opp["opportunity_id"],
            order_by=[quotes.table.c.version],
        )
    ]
    view["contracts"] = [
        public(r)
        for r in await contracts.where(contracts.table.c.opportunity_id == opp["opportunity_id"])
    ]
    view["notes_attached"] = [
        public(r)
        for r in await notes.where(
            notes.table.c.entity_type == "Opportunity",
            notes.table.c.entity_id == opp["opportunity_id"],
        )
    ]
    view["documents"] = [
        public(r)
        for r in await documents.where(
            documents.table.c.entity_type == "Opportunity",
            documents.table.c.entity_id == opp["opportunity_id"],
        )
    ]
    return view


@tool(
    "summarize_opportunities",
    kind=ToolKind.READ,
    request=SummarizeOpportunitiesRequest,
    response=OpportunitySummary,
    tag="opportunities",
)
async def summarize_opportunities(
    ctx: ToolContext, args: SummarizeOpportunitiesRequest
) -> dict[str, Any]:
    """Totals of the pipeline: count, total and average amount, weighted pipeline, per stage.

    Filters (optional): client_id, owner, stage. Weighted pipeline = sum of amount x
    probability / 100 over open deals.
    Example: {"client_id": "<id>"}
    """
    opportunities = repo(ctx, "opportunity")
    c = opportunities.table.c
    conditions: list[sa.ColumnElement[bool]] = []
    if args.client_id is not None:
        conditions.append(c.client_id == args.client_id)
    if args.owner is not None:
        conditions.append(c.owner == args.owner)
    if args.stage is not None:
        conditions.append(c.stage == args.stage.value)
    stmt = (
        sa.select(
            c.stage,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(c.amount), 0),
            sa.func.coalesce(sa.func.sum(c.amount * sa.func.coalesce(c.probability, 0) / 100), 0),
        )
        .where(*conditions)
        .group_by(c.stage)
    )
    rows = {r[0]: r for r in (await ctx.conn.execute(stmt)).all()}
    by_stage = []
    count = 0
    total = Decimal(0)
    weighted = Decimal(0)
    for stage in OpportunityStage:
        row = rows.get(stage.value)
        if row is None:
            continue
        by_stage.append({"stage": stage.value, "count": int(row[1]), "total_amount": float(row[2])})
        count += int(row[1])
        total += row[2]
        if stage in OPEN_STAGES:
            weighted += row[3]
    return {
        "count": count,
        "total_amount": float(total),
        "average_amount": round(float(total) / count, 2) if count else 0.0,
        "weighted_pipeline": round(float(weighted), 2),
        "by_stage": by_stage,
    }
