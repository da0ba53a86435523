"""The world data set: deterministic, exact to the schema, referentially sound, with its traps."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import crm_api
from crm_api.domain import (
    ALLOWED_FILE_EXTENSIONS,
    CLOSED_STAGES,
    ENTITY_TABLES,
    ENTITY_TYPE_TABLES,
    MAX_AMOUNT,
    OPEN_STAGES,
    PRIMARY_KEYS,
    SALES_REP_MAX_DISCOUNT,
    WORLD_DATE,
    ClientStatus,
    CompanyType,
    ContractStatus,
    DocumentEntityType,
    NoteEntityType,
    OpportunityStage,
    QuoteStatus,
)
from crm_api.world import WORLD_SEED, build_world, sales_reps, world_version
from crmbench_contracts.canonical import canonical_json

World = dict[str, list[dict[str, Any]]]

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "versions" / "0001_crm_schema.py"
WORLD_START = datetime.combine(WORLD_DATE, datetime.min.time(), tzinfo=UTC)
EMAIL = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
OPEN = {stage.value for stage in OPEN_STAGES}
CLOSED = {stage.value for stage in CLOSED_STAGES}


@pytest.fixture(scope="module")
def world() -> World:
    return build_world()


def _ddl_columns() -> dict[str, dict[str, tuple[str, bool]]]:
    """Columns of the world.* tables in the migration: name -> (SQL type, NOT NULL)."""
    text = MIGRATION.read_text(encoding="utf-8")
    tables: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, body in re.findall(r"CREATE TABLE world\.(\w+) \((.*?)\n\);", text, re.S):
        column_lines = re.finditer(
            r"^    ([a-z_]+) +(text\[\]|text|integer|numeric\(14, 2\)|date|timestamptz)(.*)$",
            body,
            re.M,
        )
        tables[table] = {
            m[1]: (m[2], "NOT NULL" in m[3] or "PRIMARY KEY" in m[3]) for m in column_lines
        }
    return tables


def _has_sql_type(value: Any, sql_type: str) -> bool:
    if sql_type == "text":
        return isinstance(value, str)
    if sql_type == "text[]":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if sql_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if sql_type == "numeric(14, 2)":
        return isinstance(value, Decimal) and value.as_tuple().exponent == -2
    if sql_type == "date":
        return isinstance(value, date) and not isinstance(value, datetime)
    if sql_type == "timestamptz":
        return isinstance(value, datetime) and value.utcoffset() == timedelta(0)
    raise AssertionError(f"unexpected SQL type {sql_type}")


def _by_id(world: World, table: str) -> dict[str, dict[str, Any]]:
    return {row[PRIMARY_KEYS[table]]: row for row in world[table]}


def _quotes_by_opportunity(world: World) -> dict[str, list[dict[str, Any]]]:
    quotes: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for quote in world["quote"]:
        quotes[quote["opportunity_id"]].append(quote)
    return quotes


# determinism and caching ---------------------------------------------------------------


def test_same_seed_gives_identical_rows() -> None:
    first, second = build_world(), build_world(WORLD_SEED)
    assert first == second
    assert canonical_json(first) == canonical_json(second)


def test_a_different_seed_gives_different_rows() -> None:
    other = build_world(7)
    assert other != build_world()
    assert {row["client_id"] for row in other["client"]}.isdisjoint(
        row["client_id"] for row in build_world()["client"]
    )


def test_world_version_is_a_stable_digest_of_the_rows() -> None:
    version = world_version()
    assert re.fullmatch(r"[0-9a-f]{16}", version)
    assert version == world_version(WORLD_SEED)
    assert version == hashlib.sha256(canonical_json(build_world()).encode("utf-8")).hexdigest()[:16]
    assert world_version(7) != version


def test_world_is_identical_in_another_process_with_another_hash_seed() -> None:
    services = str(Path(crm_api.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "PYTHONPATH": os.pathsep.join(filter(None, [services, os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", "from crm_api.world import world_version; print(world_version())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == world_version()


def test_callers_cannot_change_the_cached_world() -> None:
    version = world_version()
    world = build_world()
    world["client"][0]["name"] = "Changed"
    world["client"].pop()
    world["company"][0]["contacts"].append("not-a-contact")
    world["note"].clear()
    assert hashlib.sha256(canonical_json(build_world()).encode("utf-8")).hexdigest()[:16] == version


# shape ---------------------------------------------------------------------------------


def test_the_world_has_the_expected_size(world: World) -> None:
    assert list(world) == list(ENTITY_TABLES)
    assert len(world["client"]) == 300
    assert len(world["opportunity"]) == 450
    assert len(world["contract"]) == 120
    assert len(world["company"]) == 60
    assert len(world["note"]) == 400
    assert len(world["document"]) == 200
    contacts_per_client = Counter(row["client_id"] for row in world["contact"])
    assert set(contacts_per_client) == {row["client_id"] for row in world["client"]}
    assert set(contacts_per_client.values()) <= {1, 2, 3, 4}
    assert len(world["quote"]) > 200


@pytest.mark.parametrize("table", ENTITY_TABLES)
def test_rows_have_exactly_the_columns_and_types_of_the_table(world: World, table: str) -> None:
    columns = _ddl_columns()[table]
    assert columns, f"no columns parsed for {table}"
    for row in world[table]:
        assert set(row) == set(columns)
        for column, (sql_type, not_null) in columns.items():
            value = row[column]
            if value is None:
                assert not not_null, f"{table}.{column} is NOT NULL"
            else:
                assert _has_sql_type(value, sql_type), f"{table}.{column}={value!r}"


@pytest.mark.parametrize("table", ENTITY_TABLES)
def test_rows_are_sorted_by_unique_uuid_primary_keys(world: World, table: str) -> None:
    keys = [row[PRIMARY_KEYS[table]] for row in world[table]]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert all(UUID4.match(key) for key in keys)


def test_timestamps_are_utc_and_before_the_world_date(world: World) -> None:
    stamps = [
        *(row["created_date"] for row in world["client"]),
        *(row["created_date"] for row in world["quote"]),
        *(row["uploaded_at"] for row in world["document"]),
        *(row["created_at"] for row in world["note"]),
    ]
    assert all(stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0) for stamp in stamps)
    assert all(stamp < WORLD_START for stamp in stamps)


# references ----------------------------------------------------------------------------


def test_foreign_keys_point_at_existing_rows(world: World) -> None:
    clients = _by_id(world, "client")
    contacts = _by_id(world, "contact")
    opportunities = _by_id(world, "opportunity")
    assert all(row["client_id"] in clients for row in world["contact"])
    assert all(row["client_id"] in clients for row in world["opportunity"])
    assert all(row["opportunity_id"] in opportunities for row in world["quote"])
    for contract in world["contract"]:
        assert contract["client_id"] in clients
        if contract["opportunity_id"] is not None:
            opportunity = opportunities[contract["opportunity_id"]]
            assert opportunity["client_id"] == contract["client_id"]
    for company in world["company"]:
        assert all(contact_id in contacts for contact_id in company["contacts"])
        assert len(set(company["contacts"])) == len(company["contacts"])


@pytest.mark.parametrize("table", ["note", "document"])
def test_notes_and_documents_are_attached_to_existing_entities(world: World, table: str) -> None:
    allowed = {kind.value for kind in (NoteEntityType if table == "note" else DocumentEntityType)}
    ids = {
        entity_type: set(_by_id(world, entity_table))
        for entity_type, entity_table in ENTITY_TYPE_TABLES.items()
    }
    kinds = Counter(row["entity_type"] for row in world[table])
    assert set(kinds) == allowed
    for row in world[table]:
        assert row["entity_id"] in ids[row["entity_type"]]


# values --------------------------------------------------------------------------------


def test_enum_columns_hold_allowed_values_and_every_value_occurs(world: World) -> None:
    def values(table: str, column: str) -> set[str]:
        return {row[column] for row in world[table]}

    assert values("client", "status") == {status.value for status in ClientStatus}
    assert values("opportunity", "stage") == {stage.value for stage in OpportunityStage}
    assert values("quote", "status") == {status.value for status in QuoteStatus}
    assert values("contract", "status") == {status.value for status in ContractStatus}
    assert values("company", "type") == {kind.value for kind in CompanyType}


def test_clients_have_unique_well_formed_emails(world: World) -> None:
    emails = [row["email"] for row in world["client"]]
    assert all(email is not None and EMAIL.match(email) for email in emails)
    assert len({email.lower() for email in emails}) == len(emails)
    assert len({row["name"] for row in world["client"]}) == len(world["client"])
    assert all(row["name"].strip() for row in world["client"])


def test_contact_emails_are_well_formed_when_given(world: World) -> None:
    emails = [row["email"] for row in world["contact"] if row["email"] is not None]
    assert emails
    assert all(EMAIL.match(email) for email in emails)


def test_opportunity_amounts_probabilities_and_close_dates(world: World) -> None:
    for opportunity in world["opportunity"]:
        assert Decimal(1_000) <= opportunity["amount"] <= Decimal(2_000_000) <= MAX_AMOUNT
        probability, stage = opportunity["probability"], opportunity["stage"]
        assert isinstance(probability, int) and 0 <= probability <= 100
        if stage == OpportunityStage.CLOSED_WON:
            assert probability == 100
        elif stage == OpportunityStage.CLOSED_LOST:
            assert probability == 0
        else:
            assert 0 < probability < 100
        if stage in CLOSED:
            assert opportunity["close_date"] < WORLD_DATE
        else:
            first, last = WORLD_DATE + timedelta(days=14), WORLD_DATE + timedelta(days=365)
            assert first <= opportunity["close_date"] <= last


def test_probability_grows_with_the_stage(world: World) -> None:
    order = list(OpportunityStage)
    by_stage: dict[str, list[int]] = defaultdict(list)
    for opportunity in world["opportunity"]:
        by_stage[opportunity["stage"]].append(opportunity["probability"])
    open_order = [stage.value for stage in order if stage.value in OPEN]
    for earlier, later in itertools.pairwise(open_order):
        assert max(by_stage[earlier]) <= min(by_stage[later])


def test_quote_versions_are_numbered_per_opportunity(world: World) -> None:
    pairs = [(row["opportunity_id"], row["version"]) for row in world["quote"]]
    assert len(set(pairs)) == len(pairs)
    for quotes in _quotes_by_opportunity(world).values():
        versions = sorted(int(quote["version"]) for quote in quotes)
        assert versions == list(range(1, len(quotes) + 1))
        by_version = sorted(quotes, key=lambda quote: int(quote["version"]))
        stamps = [quote["created_date"] for quote in by_version]
        assert stamps == sorted(stamps)


def test_quote_values_and_prefixes(world: World) -> None:
    opportunities = _by_id(world, "opportunity")
    for quote in world["quote"]:
        assert Decimal(0) < quote["amount"] <= MAX_AMOUNT
        assert quote["valid_until"] > quote["created_date"].date()
        opportunity = opportunities[quote["opportunity_id"]]
        if opportunity["stage"] in CLOSED:
            assert quote["created_date"].date() <= opportunity["close_date"]
    prefixes = {quote["quote_prefix"] for quote in world["quote"]}
    assert 2 <= len(prefixes) <= 8
    assert all(re.fullmatch(r"[A-Z][A-Z0-9-]{1,9}", prefix) for prefix in prefixes)


def test_quote_statuses_match_the_opportunity_stage(world: World) -> None:
    opportunities = _by_id(world, "opportunity")
    quotes = _quotes_by_opportunity(world)
    for opportunity_id, opportunity in opportunities.items():
        stage = opportunity["stage"]
        statuses = Counter(quote["status"] for quote in quotes.get(opportunity_id, []))
        assert statuses[QuoteStatus.APPROVED] <= 1
        if stage in (OpportunityStage.PROSPECTING, OpportunityStage.QUALIFICATION):
            assert not statuses
        elif stage == OpportunityStage.PROPOSAL:
            assert statuses[QuoteStatus.DRAFT] + statuses[QuoteStatus.SENT] >= 1
            assert statuses[QuoteStatus.APPROVED] == 0
        elif stage == OpportunityStage.NEGOTIATION:
            live = (QuoteStatus.DRAFT, QuoteStatus.SENT, QuoteStatus.APPROVED)
            assert sum(statuses[status] for status in live) >= 1
        elif stage == OpportunityStage.CLOSED_LOST:
            assert statuses[QuoteStatus.APPROVED] == 0


def test_every_closed_won_opportunity_has_an_approved_quote(world: World) -> None:
    quotes = _quotes_by_opportunity(world)
    won = [row for row in world["opportunity"] if row["stage"] == OpportunityStage.CLOSED_WON]
    assert won
    for opportunity in won:
        statuses = [quote["status"] for quote in quotes[opportunity["opportunity_id"]]]
        assert QuoteStatus.APPROVED in statuses


def test_approved_quotes_are_within_a_sales_reps_discount(world: World) -> None:
    opportunities = _by_id(world, "opportunity")
    for quote in world["quote"]:
        if quote["status"] == QuoteStatus.APPROVED:
            amount = opportunities[quote["opportunity_id"]]["amount"]
            assert quote["amount"] >= amount * Decimal(1 - SALES_REP_MAX_DISCOUNT)


def test_contracts_are_consistent_with_their_deals_and_dates(world: World) -> None:
    opportunities = _by_id(world, "opportunity")
    for contract in world["contract"]:
        assert contract["end_date"] > contract["start_date"]
        assert contract["value"] > 0
        assert contract["document_url"] == (
            f"https://docs.example.com/contracts/{contract['contract_id']}.pdf"
        )
        opportunity = opportunities.get(contract["opportunity_id"] or "")
        if contract["status"] == ContractStatus.ACTIVE:
            assert opportunity is not None
            assert opportunity["stage"] == OpportunityStage.CLOSED_WON
            assert contract["start_date"] <= WORLD_DATE < contract["end_date"]
        elif contract["status"] == ContractStatus.PENDING:
            assert opportunity is None or opportunity["stage"] in OPEN
        else:
            assert contract["end_date"] < WORLD_DATE


def test_document_file_names_are_safe_with_allowed_extensions(world: World) -> None:
    for document in world["document"]:
        name = document["file_name"]
        assert "/" not in name and "\\" not in name and ".." not in name
        stem, _, extension = name.rpartition(".")
        assert stem and extension in ALLOWED_FILE_EXTENSIONS
        assert document["file_url"].startswith("https://")


def test_notes_have_content(world: World) -> None:
    assert all(row["content"].strip() for row in world["note"])


def test_people_come_from_a_small_fixed_list_of_sales_reps(world: World) -> None:
    reps = sales_reps()
    assert 3 <= len(reps) <= 10 and len(set(reps)) == len(reps)
    people = {
        *(row["owner"] for row in world["client"]),
        *(row["owner"] for row in world["opportunity"]),
        *(row["uploaded_by"] for row in world["document"]),
        *(row["created_by"] for row in world["note"]),
    }
    assert people == set(reps)


# traps ---------------------------------------------------------------------------------

_GENERIC_NAME_WORDS = frozenset(
    {"inc", "llc", "ltd", "plc", "co", "corp", "corporation", "company", "group", "and", "sons"}
    | {"traders", "trading", "systems"}
)


def _name_core(name: str) -> str:
    words = re.findall(r"[a-z0-9]+", name.lower())
    return " ".join(word for word in words if word not in _GENERIC_NAME_WORDS)


def test_trap_clients_with_confusingly_similar_names(world: World) -> None:
    by_core: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for client in world["client"]:
        by_core[_name_core(client["name"])].append(client)
    confusable = [clients for clients in by_core.values() if len(clients) >= 2]
    assert len(confusable) >= 2
    for clients in confusable:
        assert len({client["email"].lower() for client in clients}) == len(clients)
    # The deliberate pairs differ by a suffix only, e.g. "X Corporation" and "X Corp".
    names = {client["name"] for client in world["client"]}
    suffix_pairs = [name for name in names if name.endswith(" Corporation")]
    assert any(name.removesuffix("oration") in names for name in suffix_pairs)


def test_trap_a_contact_listed_at_two_companies(world: World) -> None:
    listings = Counter(contact for row in world["company"] for contact in row["contacts"])
    assert max(listings.values()) >= 2


def test_trap_a_closed_opportunity_with_an_open_quote(world: World) -> None:
    opportunities = _by_id(world, "opportunity")
    open_quotes_on_closed = [
        quote
        for quote in world["quote"]
        if quote["status"] in (QuoteStatus.DRAFT, QuoteStatus.SENT)
        and opportunities[quote["opportunity_id"]]["stage"] in CLOSED
    ]
    assert open_quotes_on_closed
    stages = {opportunities[q["opportunity_id"]]["stage"] for q in open_quotes_on_closed}
    assert stages == CLOSED


def test_trap_a_client_without_opportunities(world: World) -> None:
    with_deals = {row["client_id"] for row in world["opportunity"]}
    assert any(row["client_id"] not in with_deals for row in world["client"])


def test_trap_a_sent_quote_beyond_a_sales_reps_discount(world: World) -> None:
    opportunities = _by_id(world, "opportunity")
    deep = [
        quote
        for quote in world["quote"]
        if quote["status"] == QuoteStatus.SENT
        and opportunities[quote["opportunity_id"]]["stage"] in OPEN
        and quote["amount"]
        < opportunities[quote["opportunity_id"]]["amount"] * Decimal(1 - SALES_REP_MAX_DISCOUNT)
    ]
    assert deep
