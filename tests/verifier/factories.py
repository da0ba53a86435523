"""Builders for small cases, states and change logs used by the verifier tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

from crmbench_contracts.cases import (
    Actor,
    AllowedChange,
    Branch,
    Case,
    CommunicationFact,
    Expected,
    Outcome,
    StateAssertion,
    Turn,
)

TODAY = "2025-11-12"


def make_case(
    *,
    case_id: str = "vfy-001",
    seed: dict[str, list[dict[str, Any]]] | None = None,
    state: Sequence[StateAssertion] = (),
    allowed: Sequence[AllowedChange] = (),
    communicate: Sequence[CommunicationFact] = (),
    turns: Sequence[str] = ("Please do the thing.",),
    outcomes: Sequence[Outcome] = (Outcome.COMPLETED,),
    alternatives: Sequence[Branch] = (),
) -> Case:
    return Case(
        case_id=case_id,
        task_category="TEST",
        workflow="Testing",
        difficulty="simple",
        split="eval",
        today=date.fromisoformat(TODAY),
        actor=Actor(name="Sam Rivera", role="sales_rep"),
        seed=seed or {},
        turns=[Turn(content=text) for text in turns],
        expected=Expected(
            state=list(state),
            allowed_changes=list(allowed),
            communicate=list(communicate),
            reference_actions=[],
            reference_reply="",
            outcomes=list(outcomes),
            alternatives=list(alternatives),
        ),
    )


def assertion(kind: str, table: str, where: dict[str, Any], **fields: Any) -> StateAssertion:
    return StateAssertion(kind=kind, table=table, where=where, **fields)


def allow(
    table: str, ops: list[str], where: dict[str, Any] | None = None, **fields: Any
) -> AllowedChange:
    return AllowedChange(table=table, ops=ops, where=where or {}, **fields)


def mentions(*phrases: str, weight: float = 1.0) -> CommunicationFact:
    return CommunicationFact(kind="mentions", fact="mentions", any_of=list(phrases), weight=weight)


def mentions_value(table: str, where: dict[str, Any], field: str) -> CommunicationFact:
    return CommunicationFact(
        kind="mentions_value",
        fact=f"gives the {table} {field}",
        ref={"table": table, "where": where, "field": field},
    )


def reason(rule: str, *subjects: str, weight: float = 2.0) -> CommunicationFact:
    return CommunicationFact(
        kind="reason", fact=f"explains {rule}", rule=rule, subject_any=list(subjects), weight=weight
    )


def judged(fact: str = "the reply is polite and explains the refusal") -> CommunicationFact:
    return CommunicationFact(kind="judge", fact=fact)


def ref(table: str, where: dict[str, Any], field: str) -> dict[str, Any]:
    return {"$ref": {"table": table, "where": where, "field": field}}


def client(client_id: str, name: str, **fields: Any) -> dict[str, Any]:
    row = {
        "client_id": client_id,
        "name": name,
        "industry": None,
        "email": None,
        "phone": None,
        "address": None,
        "status": "Active",
        "created_date": "2025-01-15T10:00:00+00:00",
        "owner": "Sam Rivera",
    }
    return row | fields


def opportunity(opportunity_id: str, client_id: str, **fields: Any) -> dict[str, Any]:
    row = {
        "opportunity_id": opportunity_id,
        "name": f"Deal {opportunity_id}",
        "client_id": client_id,
        "stage": "Qualification",
        "amount": 75000.0,
        "close_date": "2026-03-31",
        "owner": "Sam Rivera",
        "probability": 25,
        "notes": None,
    }
    return row | fields


def note(note_id: str, entity_id: str, content: str, entity_type: str = "Client") -> dict[str, Any]:
    return {
        "note_id": note_id,
        "entity_type": entity_type,
        "entity_id": entity_id,
        "content": content,
        "created_by": "Sam Rivera",
        "created_at": "2025-11-12T09:00:00+00:00",
    }


TABLES = ("client", "company", "contact", "opportunity", "quote", "contract", "document", "note")


def state_of(**tables: list[dict[str, Any]]) -> dict[str, Any]:
    """A state as GET /episodes/{id}/state renders it, every table present."""
    rendered: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES} | tables
    return {
        "today": TODAY,
        "actor": {"name": "Sam Rivera", "role": "sales_rep"},
        "tables": rendered,
    }


def insert(table: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"table": table, "op": "INSERT", "key": row[f"{table}_id"], "before": None, "after": row}


def update(table: str, before: dict[str, Any], **changed: Any) -> dict[str, Any]:
    return {
        "table": table,
        "op": "UPDATE",
        "key": before[f"{table}_id"],
        "before": before,
        "after": before | changed,
    }


def delete(table: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"table": table, "op": "DELETE", "key": row[f"{table}_id"], "before": row, "after": None}


def change_log(*calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A change log with one tool call (ids call-1, call-2, ...) per group of changes."""
    tool_calls = []
    seq = 0
    for number, changes in enumerate(calls, start=1):
        entries = []
        for change in changes:
            seq += 1
            entries.append({"seq": seq, **change})
        tool_calls.append(
            {"tool_call_id": f"call-{number}", "tool": "test_tool", "changes": entries}
        )
    return {"episode_id": "ep_test", "tool_calls": tool_calls, "total_changes": seq}


EMPTY_LOG: dict[str, Any] = {"episode_id": "ep_test", "tool_calls": [], "total_changes": 0}
