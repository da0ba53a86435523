"""Quote tools: pricing proposals for an opportunity and their status machine."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from crm_api.context import ToolContext
from crm_api.domain import (
    FINAL_QUOTE_STATUSES,
    SALES_REP_MAX_DISCOUNT,
    ActorRole,
    QuoteStatus,
    next_quote_stages,
)
from crm_api.errors import CrmError
from crm_api.repository import Row, new_id, public
from crm_api.schemas import (
    CompareQuoteDetailsRequest,
    CompareQuotesRequest,
    CreateQuote,
    Deleted,
    ModifyQuote,
    NoArguments,
    QuoteComparison,
    QuoteDetail,
    QuoteDetailComparison,
    QuoteOut,
    QuotePage,
    QuotePrefixes,
    QuoteRef,
    QuoteSearch,
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
from crm_api.tools.opportunities import delete_attachments
from crm_api.tools.registry import ToolKind, tool
from crmbench_contracts.api_errors import ErrorCode

DEFAULT_PREFIX = "Q"


def _discount(opportunity_amount: Decimal, quote_amount: Decimal) -> Decimal:
    if opportunity_amount <= 0:
        return Decimal(0)
    return (opportunity_amount - quote_amount) / opportunity_amount


async def _next_version(ctx: ToolContext, opportunity_id: str) -> str:
    quotes = repo(ctx, "quote")
    rows = await quotes.where(quotes.table.c.opportunity_id == opportunity_id)
    numbers = [int(r["version"]) for r in rows if str(r["version"]).isdigit()]
    return str(max(numbers, default=0) + 1)


def _final_quote(quote: Row) -> CrmError:
    return CrmError(
        ErrorCode.MODIFY_FINAL_QUOTE,
        f"Quote {quote['quote_id']} is {quote['status']}, a final status; it cannot be changed. "
        "Create a new quote instead.",
        field="quote_id",
        status_code=409,
    )


@tool("create_quote", kind=ToolKind.WRITE, request=CreateQuote, response=QuoteOut, tag="quotes")
async def create_quote(ctx: ToolContext, args: CreateQuote) -> dict[str, Any]:
    """Create a quote (a pricing proposal) for an open opportunity.

    Rules: opportunity_id and amount are required; amount is a JSON number > 0. The
    opportunity must exist and be open (a Closed-Won or Closed-Lost deal cannot be quoted).
    status starts as Draft (default) or Sent. The version is numbered per opportunity
    automatically (1, 2, ...). valid_until is YYYY-MM-DD and not in the past.
    Example: {"opportunity_id": "<id>", "amount": 75000, "valid_until": "2026-01-31"}
    """
    opportunity = await reference(ctx, "opportunity", args.opportunity_id, "opportunity_id")
    ensure_open(opportunity, "quoted")
    status = args.status or QuoteStatus.DRAFT
    if status not in (QuoteStatus.DRAFT, QuoteStatus.SENT):
        raise CrmError(
            ErrorCode.INVALID_STAGE_TRANSITION,
            f"A new quote cannot start as {status.value}; create it as Draft or Sent, then "
            "update its status with modify_quote.",
            field="status",
            allowed=[QuoteStatus.DRAFT.value, QuoteStatus.SENT.value],
            status_code=409,
        )
    ensure_not_past(ctx, args.valid_until, "valid_until")
    row = await repo(ctx, "quote").insert(
        {
            "quote_id": new_id(),
            "opportunity_id": args.opportunity_id,
            "version": await _next_version(ctx, args.opportunity_id),
            "amount": args.amount,
            "status": status.value,
            "valid_until": args.valid_until,
            "quote_prefix": args.quote_prefix or DEFAULT_PREFIX,
            "created_date": ctx.episode.now,
        }
    )
    return public(row)


@tool("modify_quote", kind=ToolKind.WRITE, request=ModifyQuote, response=QuoteOut, tag="quotes")
async def modify_quote(ctx: ToolContext, args: ModifyQuote) -> dict[str, Any]:
    """Update a quote's amount, status, valid_until or quote_prefix.

    Status machine: Draft -> Sent -> Approved or Rejected; Draft or Sent -> Canceled;
    Approved, Rejected and Canceled are final and cannot change. A quote of a closed
    opportunity cannot be modified. A sales rep may not approve a quote more than 20% below
    the opportunity's amount (PERMISSION_DENIED: ask a manager).
    Example: {"quote_id": "<id>", "status": "Sent"}
    """
    quote = await require(ctx, "quote", args.quote_id, "quote_id")
    values = changes_of(args, "quote_id", required=("amount", "status"))
    opportunity = await repo(ctx, "opportunity").get(quote["opportunity_id"])
    assert opportunity is not None  # enforced by the foreign key
    ensure_open(opportunity, "changed through its quotes")
    current = QuoteStatus(quote["status"])
    target: QuoteStatus | None = values.get("status")
    if target is not None and target != current:
        allowed = next_quote_stages(current)
        if target not in allowed:
            raise CrmError(
                ErrorCode.INVALID_STAGE_TRANSITION,
                f"A {current.value} quote cannot become {target.value}.",
                field="status",
                allowed=[s.value for s in allowed],
                status_code=409,
            )
    elif current in FINAL_QUOTE_STATUSES:
        raise _final_quote(quote)
    if target == QuoteStatus.APPROVED and ctx.episode.actor_role != ActorRole.MANAGER:
        amount: Decimal = values.get("amount") or quote["amount"]
        discount = _discount(opportunity["amount"], amount)
        if discount > Decimal(str(SALES_REP_MAX_DISCOUNT)):
            raise CrmError(
                ErrorCode.PERMISSION_DENIED,
                f"The quote is {discount * 100:.1f}% below the opportunity amount; a sales rep "
                f"may approve at most {SALES_REP_MAX_DISCOUNT:.0%}. Ask a manager to approve.",
                field="status",
                status_code=403,
            )
    ensure_not_past(ctx, values.get("valid_until"), "valid_until")
    if target is not None:
        values["status"] = target.value
    return public(await repo(ctx, "quote").update(args.quote_id, values))


@tool("cancel_quote", kind=ToolKind.WRITE, request=QuoteRef, response=QuoteOut, tag="quotes")
async def cancel_quote(ctx: ToolContext, args: QuoteRef) -> dict[str, Any]:
    """Cancel a Draft or Sent quote (status becomes Canceled, which is final).

    Allowed also on a closed opportunity, to clean up quotes left open. Approved, Rejected
    and Canceled quotes cannot be canceled.
    Example: {"quote_id": "<id>"}
    """
    quote = await require(ctx, "quote", args.quote_id, "quote_id")
    if QuoteStatus(quote["status"]) in FINAL_QUOTE_STATUSES:
        raise CrmError(
            ErrorCode.INVALID_STAGE_TRANSITION,
            f"A {quote['status']} quote is final and cannot be canceled.",
            field="status",
            allowed=[],
            status_code=409,
        )
    return public(
        await repo(ctx, "quote").update(args.quote_id, {"status": QuoteStatus.CANCELED.value})
    )


@tool("delete_quote", kind=ToolKind.WRITE, request=QuoteRef, response=Deleted, tag="quotes")
async def delete_quote(ctx: ToolContext, args: QuoteRef) -> dict[str, Any]:
    """Delete a quote and the notes and documents attached to it.

    Only a manager may delete records; a sales rep gets PERMISSION_DENIED (cancel_quote is
    the sales rep's way to withdraw a quote).
    Example: {"quote_id": "<id>"}
    """
    await require(ctx, "quote", args.quote_id, "quote_id")
    ensure_manager(ctx, "delete records")
    cascaded = await delete_attachments(ctx, {"Quote": [args.quote_id]})
    await repo(ctx, "quote").delete(args.quote_id)
    return {
        "deleted": True,
        "entity_type": "Quote",
        "entity_id": args.quote_id,
        "cascaded": cascaded,
    }


@tool("quote_search", kind=ToolKind.READ, request=QuoteSearch, response=QuotePage, tag="quotes")
async def quote_search(ctx: ToolContext, args: QuoteSearch) -> dict[str, Any]:
    """Find quotes by typed criteria; returns one page of matches and the total count.

    Criteria (optional, AND): opportunity_id, status, quote_prefix, min_amount, max_amount.
    Example: {"criteria": {"opportunity_id": "<id>", "status": "Draft"}}
    """
    quotes = repo(ctx, "quote")
    c = quotes.table.c
    crit = args.criteria
    conditions: list[sa.ColumnElement[bool]] = []
    if crit.opportunity_id is not None:
        conditions.append(c.opportunity_id == crit.opportunity_id)
    if crit.status is not None:
        conditions.append(c.status == crit.status.value)
    if crit.quote_prefix is not None:
        conditions.append(c.quote_prefix == crit.quote_prefix)
    if crit.min_amount is not None:
        conditions.append(c.amount >= Decimal(str(crit.min_amount)))
    if crit.max_amount is not None:
        conditions.append(c.amount <= Decimal(str(crit.max_amount)))
    total, rows = await quotes.page(
        conditions,
        limit=args.limit,
        offset=args.offset,
        order_by=[c.opportunity_id.collate("C"), c.version.collate("C")],
    )
    return page(total, rows, args.limit, args.offset)


async def _detail(ctx: ToolContext, quote: Row) -> dict[str, Any]:
    opportunity = await repo(ctx, "opportunity").get(quote["opportunity_id"])
    assert opportunity is not None
    client = await repo(ctx, "client").get(opportunity["client_id"])
    assert client is not None
    detail = public(quote)
    detail.update(
        opportunity_name=opportunity["name"],
        opportunity_stage=opportunity["stage"],
        opportunity_amount=float(opportunity["amount"]),
        client_id=client["client_id"],
        client_name=client["name"],
        discount_percent=round(float(_discount(opportunity["amount"], quote["amount"])) * 100, 2),
    )
    return detail


@tool("quote_details", kind=ToolKind.READ, request=QuoteRef, response=QuoteDetail, tag="quotes")
async def quote_details(ctx: ToolContext, args: QuoteRef) -> dict[str, Any]:
    """Show one quote with its opportunity, client and discount from the deal amount.

    Example: {"quote_id": "<id>"}
    """
    return await _detail(ctx, await require(ctx, "quote", args.quote_id, "quote_id"))


async def _quotes_to_compare(ctx: ToolContext, args: CompareQuotesRequest) -> list[Row]:
    quotes = repo(ctx, "quote")
    if args.quote_ids is not None and args.opportunity_id is not None:
        raise CrmError(ErrorCode.INVALID_REQUEST, "Give quote_ids or opportunity_id, not both.")
    if args.quote_ids is not None:
        rows = []
        for index, quote_id in enumerate(args.quote_ids):
            row = await quotes.get(quote_id)
            if row is None:
                raise CrmError(
                    ErrorCode.NOT_FOUND,
                    f"No quote with id {quote_id!r} exists.",
                    field=f"quote_ids.{index}",
                    status_code=404,
                )
            rows.append(row)
        return rows
    if args.opportunity_id is not None:
        await reference(ctx, "opportunity", args.opportunity_id, "opportunity_id")
        rows = await quotes.where(
            quotes.table.c.opportunity_id == args.opportunity_id,
            order_by=[quotes.table.c.version],
        )
        if len(rows) < 2:
            raise CrmError(
                ErrorCode.INVALID_REQUEST,
                f"The opportunity has {len(rows)} quote(s); comparing needs at least two.",
                field="opportunity_id",
            )
        return rows
    raise CrmError(
        ErrorCode.MISSING_REQUIRED_FIELD,
        "Give quote_ids (2 to 10 quotes) or opportunity_id.",
        field="quote_ids",
    )


@tool(
    "compare_quotes",
    kind=ToolKind.READ,
    request=CompareQuotesRequest,
    response=QuoteComparison,
    tag="quotes",
)
async def compare_quotes(ctx: ToolContext, args: CompareQuotesRequest) -> dict[str, Any]:
    """Compare quotes side by side: amount, status, version; names the lowest and highest.

    Give quote_ids (2 to 10) or an opportunity_id to compare all its quotes.
    Example: {"opportunity_id": "<id>"}
    """
    rows = await _quotes_to_compare(ctx, args)
    lowest = min(rows, key=lambda r: (r["amount"], r["quote_id"]))
    highest = max(rows, key=lambda r: (r["amount"], r["quote_id"]))
    fields = (
        "quote_id",
        "opportunity_id",
        "version",
        "amount",
        "status",
        "valid_until",
        "quote_prefix",
    )
    return {
        "quotes": [public({k: r[k] for k in fields}) for r in rows],
        "lowest_quote_id": lowest["quote_id"],
        "highest_quote_id": highest["quote_id"],
        "amount_spread": float(highest["amount"] - lowest["amount"]),
    }


@tool(
    "compare_quote_details",
    kind=ToolKind.READ,
    request=CompareQuoteDetailsRequest,
    response=QuoteDetailComparison,
    tag="quotes",
)
async def compare_quote_details(
    ctx: ToolContext, args: CompareQuoteDetailsRequest
) -> dict[str, Any]:
    """Compare two quotes field by field, with their deals, and list what differs.

    Example: {"quote_ids": ["<id1>", "<id2>"]}
    """
    rows = await _quotes_to_compare(ctx, CompareQuotesRequest(quote_ids=args.quote_ids))
    details = [await _detail(ctx, r) for r in rows]
    differences = []
    same = []
    for field in sorted(details[0]):
        if field == "quote_id":
            continue
        values = [d[field] for d in details]
        if values[0] == values[1]:
            same.append(field)
        else:
            differences.append({"field": field, "values": values})
    return {"quotes": details, "differences": differences, "same": same}


@tool(
    "quote_prefixes", kind=ToolKind.READ, request=NoArguments, response=QuotePrefixes, tag="quotes"
)
async def quote_prefixes(ctx: ToolContext, args: NoArguments) -> dict[str, Any]:
    """List the quote prefixes in use and how many quotes carry each.

    Example: {}
    """
    counts = await repo(ctx, "quote").count_by("quote_prefix")
    return {"prefixes": [{"quote_prefix": p, "count": n} for p, n in counts]}
