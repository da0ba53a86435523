"""Contract tools: agreements with a client, optionally tied to one of its opportunities."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from crm_api.context import ToolContext
from crm_api.domain import ContractStatus, OpportunityStage
from crm_api.errors import CrmError
from crm_api.repository import new_id, public
from crm_api.schemas import ContractOut, ContractPage, ContractSearch, CreateContract
from crm_api.tools.common import page, reference, repo
from crm_api.tools.registry import ToolKind, tool
from crmbench_contracts.api_errors import ErrorCode


@tool(
    "create_contract",
    kind=ToolKind.WRITE,
    request=CreateContract,
    response=ContractOut,
    tag="contracts",
)
async def create_contract(ctx: ToolContext, args: CreateContract) -> dict[str, Any]:
    """Create a contract for a client, optionally linked to one of that client's opportunities.

    Rules: client_id is required and must exist. opportunity_id, when given, must belong to
    the same client (CROSS_ENTITY_MISMATCH otherwise). status is Pending (default), Active
    or Expired: a Pending contract may be drafted while the deal is open; an Active contract
    needs the opportunity Closed-Won. end_date must be after start_date; value > 0.
    Example: {"client_id": "<id>", "opportunity_id": "<id>", "value": 150000,
    "status": "Pending", "start_date": "2026-01-01", "end_date": "2026-12-31"}
    """
    await reference(ctx, "client", args.client_id, "client_id")
    status = args.status or ContractStatus.PENDING
    if args.opportunity_id is not None:
        opportunity = await reference(ctx, "opportunity", args.opportunity_id, "opportunity_id")
        if opportunity["client_id"] != args.client_id:
            raise CrmError(
                ErrorCode.CROSS_ENTITY_MISMATCH,
                f"Opportunity {args.opportunity_id} belongs to client "
                f"{opportunity['client_id']}, not {args.client_id}. Use an opportunity of "
                "the same client.",
                field="opportunity_id",
            )
        stage = OpportunityStage(opportunity["stage"])
        if stage == OpportunityStage.CLOSED_LOST:
            raise CrmError(
                ErrorCode.MODIFY_CLOSED_OPPORTUNITY,
                "The opportunity is Closed-Lost; no contract can be made for it.",
                field="opportunity_id",
                status_code=409,
            )
        if status == ContractStatus.ACTIVE and stage != OpportunityStage.CLOSED_WON:
            raise CrmError(
                ErrorCode.INVALID_STAGE_TRANSITION,
                f"An Active contract needs the opportunity Closed-Won (it is {stage.value}); "
                "create the contract as Pending instead.",
                field="status",
                allowed=[ContractStatus.PENDING.value],
                status_code=409,
            )
    if args.start_date and args.end_date and args.end_date <= args.start_date:
        raise CrmError(
            ErrorCode.INVALID_DATE_RANGE,
            f"end_date {args.end_date.isoformat()} must be after start_date "
            f"{args.start_date.isoformat()}",
            field="end_date",
        )
    row = await repo(ctx, "contract").insert(
        {
            "contract_id": new_id(),
            "client_id": args.client_id,
            "opportunity_id": args.opportunity_id,
            "start_date": args.start_date,
            "end_date": args.end_date,
            "value": args.value,
            "status": status.value,
            "document_url": args.document_url,
        }
    )
    return public(row)


@tool(
    "contract_search",
    kind=ToolKind.READ,
    request=ContractSearch,
    response=ContractPage,
    tag="contracts",
)
async def contract_search(ctx: ToolContext, args: ContractSearch) -> dict[str, Any]:
    """Find contracts by typed criteria; returns one page of matches and the total count.

    Criteria (optional, AND): client_id, opportunity_id, status.
    Example: {"criteria": {"client_id": "<id>", "status": "Active"}}
    """
    contracts = repo(ctx, "contract")
    c = contracts.table.c
    crit = args.criteria
    conditions: list[sa.ColumnElement[bool]] = []
    if crit.client_id is not None:
        conditions.append(c.client_id == crit.client_id)
    if crit.opportunity_id is not None:
        conditions.append(c.opportunity_id == crit.opportunity_id)
    if crit.status is not None:
        conditions.append(c.status == crit.status.value)
    total, rows = await contracts.page(conditions, limit=args.limit, offset=args.offset)
    return page(total, rows, args.limit, args.offset)
