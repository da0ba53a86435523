"""Queries on the entity tables of the episode a connection is bound to."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from crm_api.domain import PRIMARY_KEYS
from crm_api.models import table_of

Row = dict[str, Any]


def new_id() -> str:
    """A fresh id for a row an agent creates (seed and world ids are deterministic)."""
    return str(uuid.uuid4())


def public(row: Mapping[str, Any]) -> Row:
    """A row as the API returns it: amounts as numbers, dates and times as ISO strings."""
    out: Row = {}
    for key, value in row.items():
        if isinstance(value, Decimal):
            out[key] = float(value)
        elif isinstance(value, datetime | date):
            out[key] = value.isoformat()
        else:
            out[key] = value
    return out


class EntityRepository:
    """CRUD and search over one entity table in the connection's episode schema."""

    def __init__(self, conn: AsyncConnection, table_name: str) -> None:
        self.conn = conn
        self.table = table_of(table_name)
        self.pk = self.table.c[PRIMARY_KEYS[table_name]]

    async def get(self, key: str, *, for_update: bool = False) -> Row | None:
        stmt = sa.select(self.table).where(self.pk == key)
        if for_update:
            stmt = stmt.with_for_update()
        row = (await self.conn.execute(stmt)).mappings().first()
        return dict(row) if row else None

    async def exists(self, key: str) -> bool:
        stmt = sa.select(sa.literal(1)).select_from(self.table).where(self.pk == key)
        return (await self.conn.execute(stmt)).first() is not None

    async def insert(self, values: Mapping[str, Any]) -> Row:
        stmt = sa.insert(self.table).values(**values).returning(self.table)
        return dict((await self.conn.execute(stmt)).mappings().one())

    async def update(self, key: str, values: Mapping[str, Any]) -> Row:
        stmt = sa.update(self.table).where(self.pk == key).values(**values).returning(self.table)
        return dict((await self.conn.execute(stmt)).mappings().one())

    async def delete(self, key: str) -> None:
        await self.conn.execute(sa.delete(self.table).where(self.pk == key))

    async def where(
        self, *conditions: sa.ColumnElement[bool], order_by: Sequence[Any] = ()
    ) -> list[Row]:
        stmt = sa.select(self.table).where(*conditions).order_by(*order_by, self.pk)
        return [dict(r) for r in (await self.conn.execute(stmt)).mappings()]

    async def page(
        self,
        conditions: Sequence[sa.ColumnElement[bool]],
        *,
        limit: int,
        offset: int,
        order_by: Sequence[Any] = (),
    ) -> tuple[int, list[Row]]:
        """One page of matching rows and how many match in all."""
        count_stmt = sa.select(sa.func.count()).select_from(self.table).where(*conditions)
        total = int((await self.conn.execute(count_stmt)).scalar_one())
        stmt = (
            sa.select(self.table)
            .where(*conditions)
            .order_by(*order_by, self.pk)
            .limit(limit)
            .offset(offset)
        )
        rows = [dict(r) for r in (await self.conn.execute(stmt)).mappings()]
        return total, rows

    async def count_by(self, column: str | None) -> list[tuple[str | None, int]]:
        if column is None:
            stmt = sa.select(sa.func.count()).select_from(self.table)
            return [(None, int((await self.conn.execute(stmt)).scalar_one()))]
        col = self.table.c[column]
        grouped = (
            sa.select(col, sa.func.count()).group_by(col).order_by(col.collate("C").nulls_last())
        )
        return [(r[0], int(r[1])) for r in (await self.conn.execute(grouped)).all()]


def equal_any_case(column: sa.ColumnElement[Any], value: str) -> sa.ColumnElement[bool]:
    """`column` equals `value` in any case: the one definition of case-insensitive equality.

    Both sides are folded by Postgres' lower(), the function of the unique index on client
    emails (`lower(email)`), so the duplicate check, the searches and the index agree on
    every input under the database's own collation. Text is never folded in Python, whose
    lower() differs (it maps 'İ' to 'i' plus a combining dot, a final 'Σ' to 'ς').
    """
    return sa.func.lower(column) == sa.func.lower(sa.literal(value, sa.Text))


def contains(column: sa.ColumnElement[Any], needle: str) -> sa.ColumnElement[bool]:
    """Case-insensitive substring match with LIKE wildcards in the input escaped."""
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.ilike(f"%{escaped}%", escape="\\")
