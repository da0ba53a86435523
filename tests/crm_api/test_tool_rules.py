"""Every business rule and failure category of domain.md, through the real HTTP API.

A refusal must carry the taxonomy code, the field and (where relevant) the allowed values,
and must leave the episode's state and change log exactly as they were.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from crm_api.tools import TOOLS
from tests.conftest import Episode, admin, open_episode
from tests.crm_api.seed import payload

STAGES = ["Prospecting", "Qualification", "Proposal", "Negotiation", "Closed-Won", "Closed-Lost"]


@pytest.fixture
async def rep(http: httpx.AsyncClient) -> AsyncIterator[Episode]:
    opened = await open_episode(http, payload("sales_rep"))
    yield opened
    await http.delete(f"/episodes/{opened.episode_id}", headers=admin())


@pytest.fixture
async def manager(http: httpx.AsyncClient) -> AsyncIterator[Episode]:
    opened = await open_episode(http, payload("manager"))
    yield opened
    await http.delete(f"/episodes/{opened.episode_id}", headers=admin())


OPP = {"name": "New deal", "client_id": "c-acme", "amount": 5000, "stage": "Prospecting"}

# (failure category, tool, arguments, HTTP status, field, allowed values or None)
REFUSALS: list[tuple[str, str, dict[str, Any], int, str | None, list[Any] | None]] = [
    # schema
    ("INVALID_ENUM", "create_new_opportunity", {**OPP, "stage": "Won"}, 422, "stage", STAGES),
    (
        "ENUM_CASE_MISMATCH",
        "create_new_opportunity",
        {**OPP, "stage": "prospecting"},
        422,
        "stage",
        STAGES,
    ),
    (
        "ENUM_WHITESPACE",
        "modify_opportunity",
        {"opportunity_id": "o-open", "stage": " Negotiation"},
        422,
        "stage",
        STAGES,
    ),
    (
        "INVALID_ENUM",
        "create_new_client",
        {"name": "X", "status": "Lead"},
        422,
        "status",
        ["Active", "Prospect", "Inactive"],
    ),
    (
        "MISSING_REQUIRED_FIELD",
        "create_new_opportunity",
        {k: v for k, v in OPP.items() if k != "amount"},
        422,
        "amount",
        None,
    ),
    (
        "MISSING_REQUIRED_FIELD",
        "create_new_contact",
        {"first_name": "A", "client_id": "c-acme"},
        422,
        "last_name",
        None,
    ),
    (
        "MISSING_REQUIRED_FIELD",
        "modify_opportunity",
        {"opportunity_id": "o-open", "name": None},
        422,
        "name",
        None,
    ),
    ("EXTRA_FIELD", "create_new_client", {"name": "X", "vip": True}, 422, "vip", None),
    ("TYPE_MISMATCH", "create_new_opportunity", {**OPP, "amount": "$5,000"}, 422, "amount", None),
    ("TYPE_MISMATCH", "create_new_opportunity", {**OPP, "amount": True}, 422, "amount", None),
    (
        "TYPE_MISMATCH",
        "modify_opportunity",
        {"opportunity_id": "o-open", "probability": "50%"},
        422,
        "probability",
        None,
    ),
    ("TYPE_MISMATCH", "create_new_client", {"name": 42}, 422, "name", None),
    # domain values
    ("NEGATIVE_AMOUNT", "create_new_opportunity", {**OPP, "amount": -5}, 422, "amount", None),
    ("ZERO_AMOUNT", "create_quote", {"opportunity_id": "o-open", "amount": 0}, 422, "amount", None),
    (
        "AMOUNT_EXCEEDS_MAX",
        "create_new_opportunity",
        {**OPP, "amount": 10_000_001},
        422,
        "amount",
        None,
    ),
    (
        "PROBABILITY_OUT_OF_RANGE",
        "modify_opportunity",
        {"opportunity_id": "o-open", "probability": 150},
        422,
        "probability",
        None,
    ),
    (
        "PROBABILITY_DECIMAL",
        "modify_opportunity",
        {"opportunity_id": "o-open", "probability": 50.5},
        422,
        "probability",
        None,
    ),
    (
        "PAST_DATE",
        "create_new_opportunity",
        {**OPP, "close_date": "2025-01-01"},
        422,
        "close_date",
        None,
    ),
    (
        "PAST_DATE",
        "create_quote",
        {"opportunity_id": "o-open", "amount": 10, "valid_until": "2025-11-11"},
        422,
        "valid_until",
        None,
    ),
    (
        "INVALID_DATE_FORMAT",
        "modify_opportunity",
        {"opportunity_id": "o-open", "close_date": "11/12/2025"},
        422,
        "close_date",
        None,
    ),
    (
        "INVALID_DATE_FORMAT",
        "create_new_opportunity",
        {**OPP, "close_date": "2026-02-30"},
        422,
        "close_date",
        None,
    ),
    # relations
    (
        "UNKNOWN_FOREIGN_KEY",
        "create_new_opportunity",
        {**OPP, "client_id": "c-missing"},
        422,
        "client_id",
        None,
    ),
    (
        "UNKNOWN_FOREIGN_KEY",
        "add_note",
        {"entity_type": "Quote", "entity_id": "q-missing", "content": "hi"},
        422,
        "entity_id",
        None,
    ),
    (
        "DUPLICATE_UNIQUE_FIELD",
        "create_new_client",
        {"name": "Acme again", "email": "OPS@Acme-Test.com"},
        409,
        "email",
        None,
    ),
    (
        "DUPLICATE_UNIQUE_FIELD",
        "modify_client",
        {"client_id": "c-beta", "email": "ops@acme-test.com"},
        409,
        "email",
        None,
    ),
    (
        "CROSS_ENTITY_MISMATCH",
        "create_contract",
        {"client_id": "c-beta", "opportunity_id": "o-open"},
        422,
        "opportunity_id",
        None,
    ),
    # strings
    ("BLANK_STRING", "create_new_client", {"name": "   "}, 422, "name", None),
    (
        "BLANK_STRING",
        "add_note",
        {"entity_type": "Client", "entity_id": "c-acme", "content": ""},
        422,
        "content",
        None,
    ),
    (
        "MALFORMED_EMAIL",
        "create_new_contact",
        {"first_name": "A", "last_name": "B", "client_id": "c-acme", "email": "jane.doe@"},
        422,
        "email",
        None,
    ),
    (
        "MALFORMED_EMAIL",
        "create_new_client",
        {"name": "X", "email": "not-an-email"},
        422,
        "email",
        None,
    ),
    (
        "UNSAFE_FILENAME",
        "upload_document",
        {"entity_type": "Opportunity", "entity_id": "o-open", "file_name": "../../etc/passwd.pdf"},
        422,
        "file_name",
        None,
    ),
    (
        "UNSAFE_FILENAME",
        "upload_document",
        {"entity_type": "Opportunity", "entity_id": "o-open", "file_name": "docs\\contract.pdf"},
        422,
        "file_name",
        None,
    ),
    (
        "UNSUPPORTED_FILE_EXTENSION",
        "upload_document",
        {"entity_type": "Client", "entity_id": "c-acme", "file_name": "setup.exe"},
        422,
        "file_name",
        None,
    ),
    (
        "MISSING_FILE_EXTENSION",
        "upload_document",
        {"entity_type": "Client", "entity_id": "c-acme", "file_name": "contract"},
        422,
        "file_name",
        None,
    ),
    # workflow
    (
        "MODIFY_CLOSED_OPPORTUNITY",
        "modify_opportunity",
        {"opportunity_id": "o-won", "amount": 25000},
        409,
        "opportunity_id",
        None,
    ),
    (
        "MODIFY_CLOSED_OPPORTUNITY",
        "create_quote",
        {"opportunity_id": "o-lost", "amount": 1000},
        409,
        "opportunity_id",
        None,
    ),
    (
        "MODIFY_CLOSED_OPPORTUNITY",
        "modify_quote",
        {"quote_id": "q-lost-open", "status": "Approved"},
        409,
        "opportunity_id",
        None,
    ),
    (
        "INVALID_STAGE_TRANSITION",
        "modify_opportunity",
        {"opportunity_id": "o-open", "stage": "Closed-Won"},
        409,
        "stage",
        ["Prospecting", "Proposal", "Negotiation", "Closed-Lost"],
    ),
    (
        "INVALID_STAGE_TRANSITION",
        "modify_opportunity",
        {"opportunity_id": "o-nego", "stage": "Closed-Won"},
        409,
        "stage",
        ["Prospecting", "Qualification", "Proposal", "Closed-Lost"],
    ),
    (
        "INVALID_STAGE_TRANSITION",
        "create_new_opportunity",
        {**OPP, "stage": "Closed-Won"},
        409,
        "stage",
        ["Prospecting", "Qualification", "Proposal", "Negotiation"],
    ),
    (
        "INVALID_STAGE_TRANSITION",
        "modify_quote",
        {"quote_id": "q-draft", "status": "Approved"},
        409,
        "status",
        ["Sent", "Canceled"],
    ),
    ("INVALID_STAGE_TRANSITION", "cancel_quote", {"quote_id": "q-rejected"}, 409, "status", []),
    (
        "INVALID_STAGE_TRANSITION",
        "create_contract",
        {"client_id": "c-acme", "opportunity_id": "o-open", "status": "Active"},
        409,
        "status",
        ["Pending"],
    ),
    (
        "UNKNOWN_FIELD_UPDATE",
        "modify_opportunity",
        {"opportunity_id": "o-open", "discount": 5},
        422,
        "discount",
        None,
    ),
    (
        "UNKNOWN_FIELD_UPDATE",
        "modify_client",
        {"client_id": "c-acme", "tier": "gold"},
        422,
        "tier",
        None,
    ),
    ("PERMISSION_DENIED", "delete_opportunity", {"opportunity_id": "o-open"}, 403, None, None),
    ("PERMISSION_DENIED", "delete_quote", {"quote_id": "q-draft"}, 403, None, None),
    (
        "PERMISSION_DENIED",
        "modify_quote",
        {"quote_id": "q-deep", "status": "Approved"},
        403,
        "status",
        None,
    ),
    # outside the taxonomy, still refusals that must change nothing
    (
        "NOT_FOUND",
        "modify_opportunity",
        {"opportunity_id": "o-nope", "amount": 5},
        404,
        "opportunity_id",
        None,
    ),
    ("NO_CHANGES", "modify_client", {"client_id": "c-acme"}, 422, None, None),
    (
        "INVALID_DATE_RANGE",
        "create_contract",
        {"client_id": "c-acme", "start_date": "2026-01-01", "end_date": "2025-12-31"},
        422,
        "end_date",
        None,
    ),
    (
        "MODIFY_FINAL_QUOTE",
        "modify_quote",
        {"quote_id": "q-approved", "amount": 70000},
        409,
        "quote_id",
        None,
    ),
    (
        "HAS_DEPENDENTS",
        "delete_opportunity",
        {"opportunity_id": "o-won"},
        409,
        "opportunity_id",
        None,
    ),
]


def _ids(case: tuple[Any, ...]) -> str:
    return f"{case[0]}-{case[1]}"


@pytest.mark.parametrize("case", REFUSALS, ids=[_ids(c) for c in REFUSALS])
async def test_refusal_has_code_field_allowed_and_changes_nothing(
    case: tuple[str, str, dict[str, Any], int, str | None, list[Any] | None],
    rep: Episode,
    manager: Episode,
) -> None:
    code, tool, args, status, field, allowed = case
    # Permission refusals are about the sales rep; HAS_DEPENDENTS needs someone allowed to delete.
    episode = manager if code == "HAS_DEPENDENTS" else rep
    before_state = await episode.state()
    before_changes = await episode.changes()
    response = await episode.call(tool, args)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["field"] == field
    assert error["message"]
    if allowed is not None:
        assert error["allowed"] == allowed
    assert await episode.state() == before_state
    assert await episode.changes() == before_changes


def test_every_failure_category_is_covered() -> None:
    taxonomy = {
        "INVALID_ENUM",
        "ENUM_CASE_MISMATCH",
        "ENUM_WHITESPACE",
        "MISSING_REQUIRED_FIELD",
        "EXTRA_FIELD",
        "TYPE_MISMATCH",
        "NEGATIVE_AMOUNT",
        "ZERO_AMOUNT",
        "AMOUNT_EXCEEDS_MAX",
        "PROBABILITY_OUT_OF_RANGE",
        "PROBABILITY_DECIMAL",
        "PAST_DATE",
        "INVALID_DATE_FORMAT",
        "UNKNOWN_FOREIGN_KEY",
        "DUPLICATE_UNIQUE_FIELD",
        "CROSS_ENTITY_MISMATCH",
        "BLANK_STRING",
        "MALFORMED_EMAIL",
        "UNSAFE_FILENAME",
        "UNSUPPORTED_FILE_EXTENSION",
        "MISSING_FILE_EXTENSION",
        "MODIFY_CLOSED_OPPORTUNITY",
        "INVALID_STAGE_TRANSITION",
        "UNKNOWN_FIELD_UPDATE",
        "PERMISSION_DENIED",
    }
    assert taxonomy <= {case[0] for case in REFUSALS}


async def test_qualification_may_jump_to_negotiation(rep: Episode) -> None:
    moved = await rep.ok(
        "modify_opportunity",
        {"opportunity_id": "o-open", "stage": "Negotiation", "probability": 75},
    )
    assert (moved["stage"], moved["probability"]) == ("Negotiation", 75)


async def test_closed_won_needs_negotiation_and_an_approved_quote(rep: Episode) -> None:
    won = await rep.ok("modify_opportunity", {"opportunity_id": "o-ready", "stage": "Closed-Won"})
    assert won["stage"] == "Closed-Won"
    # once closed, nothing but notes and documents
    refused = await rep.call("modify_opportunity", {"opportunity_id": "o-ready", "probability": 5})
    assert refused.json()["error"]["code"] == "MODIFY_CLOSED_OPPORTUNITY"
    await rep.ok(
        "add_note", {"entity_type": "Opportunity", "entity_id": "o-ready", "content": "Signed."}
    )
    doc = await rep.ok(
        "upload_document",
        {"entity_type": "Opportunity", "entity_id": "o-ready", "file_name": "Signed Contract.PDF"},
    )
    assert doc["uploaded_by"] == "Riley Rep"


async def test_full_quote_lifecycle_then_win_then_active_contract(rep: Episode) -> None:
    quote = await rep.ok("create_quote", {"opportunity_id": "o-open", "amount": 92000})
    assert (quote["version"], quote["status"]) == ("3", "Draft")
    await rep.ok("modify_quote", {"quote_id": quote["quote_id"], "status": "Sent"})
    await rep.ok("modify_quote", {"quote_id": quote["quote_id"], "status": "Approved"})
    await rep.ok("modify_opportunity", {"opportunity_id": "o-open", "stage": "Negotiation"})
    await rep.ok("modify_opportunity", {"opportunity_id": "o-open", "stage": "Closed-Won"})
    contract = await rep.ok(
        "create_contract",
        {"client_id": "c-acme", "opportunity_id": "o-open", "status": "Active", "value": 92000},
    )
    assert contract["status"] == "Active"


async def test_sales_rep_may_approve_a_small_discount_and_manager_a_large_one(
    rep: Episode, manager: Episode
) -> None:
    assert (await rep.ok("modify_quote", {"quote_id": "q-fair", "status": "Approved"}))[
        "status"
    ] == "Approved"
    assert (await manager.ok("modify_quote", {"quote_id": "q-deep", "status": "Approved"}))[
        "status"
    ] == "Approved"


async def test_manager_deletes_an_opportunity_with_its_quotes(manager: Episode) -> None:
    await manager.ok("add_note", {"entity_type": "Quote", "entity_id": "q-deep", "content": "x"})
    deleted = await manager.ok("delete_opportunity", {"opportunity_id": "o-nego"})
    assert deleted["cascaded"] == {"quote": 2, "note": 1, "document": 0}
    gone = await manager.call("quote_details", {"quote_id": "q-deep"})
    assert gone.status_code == 404


async def test_cancel_quote_is_allowed_on_a_closed_deal(rep: Episode) -> None:
    canceled = await rep.ok("cancel_quote", {"quote_id": "q-lost-open"})
    assert canceled["status"] == "Canceled"


async def test_clone_copies_fields_with_a_new_id(rep: Episode) -> None:
    copy = await rep.ok("clone_opportunity", {"opportunity_id": "o-open"})
    original = await rep.ok("opportunity_details", {"opportunity_id": "o-open"})
    assert copy["opportunity_id"] != "o-open"
    assert {k: v for k, v in copy.items() if k != "opportunity_id"} == {
        k: v for k, v in original.items() if k != "opportunity_id"
    }


async def test_change_log_records_each_write_with_before_and_after(rep: Episode) -> None:
    response = await rep.http.post(
        "/tools/modify_opportunity",
        json={"opportunity_id": "o-open", "amount": 120000},
        headers={**rep.auth, "X-Tool-Call-Id": "call-42"},
    )
    assert response.status_code == 200
    assert response.headers["X-Tool-Call-Id"] == "call-42"
    await rep.ok("opportunity_search", {"criteria": {"name": "acme"}})  # reads log nothing
    log = await rep.changes()
    assert log["total_changes"] == 1
    [call] = log["tool_calls"]
    assert (call["tool_call_id"], call["tool"]) == ("call-42", "modify_opportunity")
    [change] = call["changes"]
    assert (change["table"], change["op"], change["key"]) == ("opportunity", "UPDATE", "o-open")
    assert change["before"]["amount"] == 100000
    assert change["after"]["amount"] == 120000


async def test_search_pages_and_counts(rep: Episode) -> None:
    first = await rep.ok("opportunity_search", {"criteria": {"client_id": "c-acme"}, "limit": 2})
    assert first["total"] == 5 and first["has_more"] and len(first["items"]) == 2
    rest = await rep.ok(
        "opportunity_search", {"criteria": {"client_id": "c-acme"}, "limit": 50, "offset": 2}
    )
    assert len(rest["items"]) == 3 and not rest["has_more"]
    names = {i["name"] for i in first["items"] + rest["items"]}
    assert len(names) == 5
    too_big = await rep.call("client_search", {"limit": 500})
    assert too_big.status_code == 422 and too_big.json()["error"]["field"] == "limit"


async def test_search_criteria_are_typed(rep: Episode) -> None:
    wrong = await rep.call("opportunity_search", {"criteria": {"stage": "qualification"}})
    assert wrong.json()["error"]["code"] == "ENUM_CASE_MISMATCH"
    unknown = await rep.call("opportunity_search", {"criteria": {"colour": "red"}})
    assert unknown.json()["error"] == {
        "code": "EXTRA_FIELD",
        "field": "criteria.colour",
        "message": unknown.json()["error"]["message"],
        "allowed": None,
    }


async def test_summaries_reflect_the_data(rep: Episode) -> None:
    summary = await rep.ok("summarize_opportunities", {"client_id": "c-beta"})
    assert summary["count"] == 1 and summary["total_amount"] == 40000
    counts = await rep.ok("summarize_counts", {"entity": "quote", "group_by": "status"})
    assert counts["total"] == sum(g["count"] for g in counts["groups"])
    bad = await rep.call("summarize_counts", {"entity": "quote", "group_by": "amount"})
    assert bad.json()["error"]["code"] == "INVALID_ENUM"
    assert "status" in bad.json()["error"]["allowed"]


async def test_quote_comparisons(rep: Episode) -> None:
    compared = await rep.ok("compare_quotes", {"opportunity_id": "o-nego"})
    assert (compared["lowest_quote_id"], compared["highest_quote_id"]) == ("q-deep", "q-fair")
    assert compared["amount_spread"] == 10000
    detail = await rep.ok("compare_quote_details", {"quote_ids": ["q-deep", "q-fair"]})
    differing = {d["field"] for d in detail["differences"]}
    assert {"amount", "version", "discount_percent"} <= differing
    assert "opportunity_id" in detail["same"]
    one = await rep.ok("quote_details", {"quote_id": "q-deep"})
    assert one["discount_percent"] == 30.0 and one["client_name"] == "Acme Test Corp"


# One successful call of every tool: a tool without one here fails this test.
HAPPY_CALLS: dict[str, dict[str, Any]] = {
    "create_new_client": {"name": "Gamma Ltd", "email": "team@gamma.example.org"},
    "create_new_contact": {"first_name": "Al", "last_name": "Bo", "client_id": "c-beta"},
    "create_new_opportunity": OPP,
    "create_quote": {"opportunity_id": "o-beta", "amount": 39000},
    "create_contract": {"client_id": "c-beta", "value": 39000, "start_date": "2026-01-01"},
    "upload_document": {"entity_type": "Client", "entity_id": "c-beta", "file_name": "nda.docx"},
    "add_note": {"entity_type": "Contact", "entity_id": "p-jane", "content": "Met at expo."},
    "modify_client": {"client_id": "c-beta", "status": "Active"},
    "modify_contact": {"contact_id": "p-jane", "title": "CFO"},
    "modify_opportunity": {"opportunity_id": "o-beta", "close_date": "2026-01-15"},
    "modify_quote": {"quote_id": "q-draft", "amount": 91000},
    "delete_opportunity": {"opportunity_id": "o-beta"},
    "delete_quote": {"quote_id": "q-rejected"},
    "cancel_quote": {"quote_id": "q-draft"},
    "clone_opportunity": {"opportunity_id": "o-open", "name": "Acme expansion II"},
    "client_search": {"criteria": {"name": "test"}},
    "contact_search": {"criteria": {"last_name": "doe"}},
    "opportunity_search": {},
    "quote_search": {"criteria": {"status": "Sent"}},
    "contract_search": {"criteria": {"client_id": "c-acme"}},
    "company_search": {"criteria": {"type": "Partner"}},
    "view_opportunity_details": {"opportunity_id": "o-won"},
    "opportunity_details": {"opportunity_id": "o-won"},
    "quote_details": {"quote_id": "q-won"},
    "compare_quotes": {"quote_ids": ["q-deep", "q-fair", "q-draft"]},
    "compare_quote_details": {"quote_ids": ["q-deep", "q-fair"]},
    "summarize_opportunities": {},
    "quote_prefixes": {},
    "list_clients": {"limit": 5},
    "list_contacts": {},
    "list_opportunities": {"offset": 10},
    "list_quotes": {},
    "list_contracts": {},
    "list_companies": {},
    "list_documents": {"entity_type": "Opportunity"},
    "list_notes": {"entity_type": "Client", "entity_id": "c-acme"},
    "summarize_counts": {"entity": "opportunity", "group_by": "stage"},
}


async def test_every_tool_has_a_working_happy_path(manager: Episode) -> None:
    assert set(HAPPY_CALLS) == set(TOOLS)
    for tool, args in HAPPY_CALLS.items():
        response = await manager.call(tool, args)
        assert response.status_code == 200, f"{tool}: {response.text}"
        body = response.json()
        assert isinstance(body, dict) and body, tool
    log = await manager.changes()
    written = {call["tool"] for call in log["tool_calls"]}
    writes = {name for name, t in TOOLS.items() if t.kind.value == "write"}
    assert written == writes


async def test_malformed_requests_get_clear_4xx_errors(rep: Episode) -> None:
    http, auth = rep.http, rep.auth
    not_object = await http.post("/tools/create_new_client", json=[], headers=auth)
    assert not_object.status_code == 422
    assert "JSON object" in not_object.json()["error"]["message"]
    not_json = await http.post(
        "/tools/create_new_client",
        content=b"{oops",
        headers={**auth, "content-type": "application/json"},
    )
    assert not_json.json()["error"]["code"] == "INVALID_REQUEST"
    not_utf8 = await http.post(
        "/tools/create_new_client",
        content=b'{"name": "\xa3"}',
        headers={**auth, "content-type": "application/json"},
    )
    assert not_utf8.status_code == 422
    assert not_utf8.json()["error"]["code"] == "INVALID_REQUEST"
    unknown = await http.post("/tools/delete_client", json={}, headers=auth)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "UNKNOWN_TOOL"
    assert "delete_opportunity" in unknown.json()["error"]["allowed"]
    wrong_method = await http.get("/tools/list_clients", headers=auth)
    assert wrong_method.status_code == 405
    bad_format = await http.get("/tools", params={"format": "xml"})
    assert bad_format.json()["error"] == {
        "code": "INVALID_ENUM",
        "field": "format",
        "message": bad_format.json()["error"]["message"],
        "allowed": ["openai", "anthropic"],
    }
    bad_call_id = await http.post(
        "/tools/list_clients", json={}, headers={**auth, "X-Tool-Call-Id": "has space"}
    )
    assert bad_call_id.status_code == 422
    assert bad_call_id.json()["error"]["field"] == "X-Tool-Call-Id"
