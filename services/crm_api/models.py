"""Table models of the CRM entities and of the episode registry.

Entity tables are declared without a schema: a tool call's transaction sets `search_path`
to its episode's schema, so one SQL text serves every episode.
The migrations in `migrations/` are the source of truth for DDL; these models must match.
The episode registry (schema crm_meta) is queried with plain SQL in `episodes/repository.py`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Field, SQLModel

WORLD_SCHEMA = "world"


def _money(nullable: bool) -> Any:
    return Field(default=None, sa_column=sa.Column(sa.Numeric(14, 2), nullable=nullable))


def _timestamp() -> Any:
    return Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=True))


class Client(SQLModel, table=True):
    __tablename__ = "client"
    client_id: str = Field(primary_key=True)
    name: str
    industry: str | None = None
    email: str | None = None
    phone: str | None = None
    address: str | None = None
    status: str = "Prospect"
    created_date: datetime | None = _timestamp()
    owner: str | None = None


class Company(SQLModel, table=True):
    __tablename__ = "company"
    company_id: str = Field(primary_key=True)
    name: str
    type: str | None = None
    industry: str | None = None
    address: str | None = None
    contacts: list[str] = Field(
        default_factory=list, sa_column=sa.Column(ARRAY(sa.Text), nullable=False)
    )


class Contact(SQLModel, table=True):
    __tablename__ = "contact"
    contact_id: str = Field(primary_key=True)
    first_name: str
    last_name: str
    title: str | None = None
    email: str | None = None
    phone: str | None = None
    client_id: str = Field(foreign_key="client.client_id")
    notes: str | None = None


class Opportunity(SQLModel, table=True):
    __tablename__ = "opportunity"
    opportunity_id: str = Field(primary_key=True)
    name: str
    client_id: str = Field(foreign_key="client.client_id")
    stage: str
    amount: Decimal = _money(nullable=False)
    close_date: date | None = None
    owner: str | None = None
    probability: int | None = None
    notes: str | None = None


class Quote(SQLModel, table=True):
    __tablename__ = "quote"
    quote_id: str = Field(primary_key=True)
    opportunity_id: str = Field(foreign_key="opportunity.opportunity_id")
    version: str
    amount: Decimal = _money(nullable=False)
    status: str = "Draft"
    valid_until: date | None = None
    created_date: datetime | None = _timestamp()
    quote_prefix: str | None = None


class Contract(SQLModel, table=True):
    __tablename__ = "contract"
    contract_id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="client.client_id")
    opportunity_id: str | None = Field(default=None, foreign_key="opportunity.opportunity_id")
    start_date: date | None = None
    end_date: date | None = None
    value: Decimal | None = _money(nullable=True)
    status: str | None = None
    document_url: str | None = None


class Document(SQLModel, table=True):
    __tablename__ = "document"
    document_id: str = Field(primary_key=True)
    entity_type: str
    entity_id: str
    file_name: str
    uploaded_by: str | None = None
    uploaded_at: datetime | None = _timestamp()
    file_url: str | None = None


class Note(SQLModel, table=True):
    __tablename__ = "note"
    note_id: str = Field(primary_key=True)
    entity_type: str
    entity_id: str
    content: str
    created_by: str | None = None
    created_at: datetime | None = _timestamp()


def table_of(name: str) -> sa.Table:
    """The SQLAlchemy table of an entity by its table name."""
    table = SQLModel.metadata.tables[name]
    assert isinstance(table, sa.Table)
    return table
