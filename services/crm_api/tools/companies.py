"""Company tools: reference companies (partners, vendors, competitors)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from crm_api.context import ToolContext
from crm_api.repository import contains
from crm_api.schemas import CompanyPage, CompanySearch
from crm_api.tools.common import page, repo
from crm_api.tools.registry import ToolKind, tool


@tool(
    "company_search",
    kind=ToolKind.READ,
    request=CompanySearch,
    response=CompanyPage,
    tag="companies",
)
async def company_search(ctx: ToolContext, args: CompanySearch) -> dict[str, Any]:
    """Find reference companies (Partner, Vendor, Competitor) by typed criteria.

    Criteria (optional, AND): name (substring, any case), type, industry (substring).
    Returns one page of matches and the total count; contacts lists contact ids.
    Example: {"criteria": {"type": "Competitor"}}
    """
    companies = repo(ctx, "company")
    c = companies.table.c
    crit = args.criteria
    conditions: list[sa.ColumnElement[bool]] = []
    if crit.name is not None:
        conditions.append(contains(c.name, crit.name))
    if crit.type is not None:
        conditions.append(c.type == crit.type.value)
    if crit.industry is not None:
        conditions.append(contains(c.industry, crit.industry))
    total, rows = await companies.page(
        conditions, limit=args.limit, offset=args.offset, order_by=[c.name.collate("C")]
    )
    return page(total, rows, args.limit, args.offset)
