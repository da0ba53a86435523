"""Rules and helpers shared by the tool handlers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from pydantic import BaseModel

from crm_api.context import ToolContext
from crm_api.domain import CLOSED_STAGES, ActorRole, OpportunityStage
from crm_api.errors import CrmError, not_found, unknown_reference
from crm_api.repository import EntityRepository, Row, public
from crmbench_contracts.api_errors import ErrorCode


def repo(ctx: ToolContext, table: str) -> EntityRepository:
    return EntityRepository(ctx.conn, table)


async def require(ctx: ToolContext, table: str, key: str, field: str) -> Row:
    """The row the call is about; 404 when it does not exist."""
    row = await repo(ctx, table).get(key, for_update=True)
    if row is None:
        raise not_found(table, key, field)
    return row


async def reference(ctx: ToolContext, table: str, key: str, field: str) -> Row:
    """A row the call refers to from a field; 422 UNKNOWN_FOREIGN_KEY when missing."""
    row = await repo(ctx, table).get(key)
    if row is None:
        raise unknown_reference(table, key, field)
    return row


def changes_of(args: BaseModel, key_field: str, required: Iterable[str] = ()) -> dict[str, Any]:
    """The fields a modify call sets. Null clears an optional field; required ones refuse it."""
    values = args.model_dump(exclude_unset=True, exclude={key_field})
    for name in required:
        if name in values and values[name] is None:
            raise CrmError(
                ErrorCode.MISSING_REQUIRED_FIELD,
                f"{name} is required and cannot be cleared",
                field=name,
            )
    if not values:
        allowed = sorted(set(type(args).model_fields) - {key_field})
        raise CrmError(
            ErrorCode.NO_CHANGES,
            "Nothing to change: give at least one field to update.",
            allowed=allowed,
        )
    return values


def ensure_open(opportunity: Row, action: str) -> None:
    if opportunity["stage"] in CLOSED_STAGES:
        raise CrmError(
            ErrorCode.MODIFY_CLOSED_OPPORTUNITY,
            f"Opportunity {opportunity['opportunity_id']} is {opportunity['stage']}; a closed "
            f"opportunity cannot be {action}. Notes and documents may still be attached.",
            field="opportunity_id",
            status_code=409,
        )


def ensure_not_past(ctx: ToolContext, value: date | None, field: str) -> None:
    if value is not None and value < ctx.episode.today:
        raise CrmError(
            ErrorCode.PAST_DATE,
            f"{field} {value.isoformat()} is in the past; today is {ctx.episode.today.isoformat()}",
            field=field,
        )


def ensure_manager(ctx: ToolContext, action: str) -> None:
    if ctx.episode.actor_role != ActorRole.MANAGER:
        raise CrmError(
            ErrorCode.PERMISSION_DENIED,
            f"{ctx.episode.actor_name} is a {ctx.episode.actor_role.value} and may not {action}; "
            "ask a manager to do it.",
            status_code=403,
        )


def page(total: int, rows: list[Row], limit: int, offset: int) -> dict[str, Any]:
    return {
        "total": total,
        "limit": limit,
        "offset": offset,
        "has_more": offset + len(rows) < total,
        "items": [public(r) for r in rows],
    }


def is_closed(stage: str) -> bool:
    return OpportunityStage(stage) in CLOSED_STAGES
