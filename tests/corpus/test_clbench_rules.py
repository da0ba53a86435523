"""The CL-Bench importer checks its cases by the verifier's rules, not looser copies:
booleans apart from numbers, only decimal strings as numbers, replies normalised."""

from __future__ import annotations

from typing import Any

from crmbench_contracts.cases import AllowedChange, CommunicationFact, StateAssertion
from crmbench_corpus.clbench import assertion_holds, collateral, fact_holds

ROW = {"opportunity_id": "o-1", "name": "Acme expansion", "amount": "1e3", "won": True}
TABLES: dict[str, list[dict[str, Any]]] = {"opportunity": [ROW]}


def _field(field: str, value: Any) -> StateAssertion:
    return StateAssertion(
        kind="field_equals",
        table="opportunity",
        where={"opportunity_id": "o-1"},
        field=field,
        value=value,
    )


def test_true_is_not_one() -> None:
    assert assertion_holds(_field("won", True), TABLES)
    assert not assertion_holds(_field("won", 1), TABLES)


def test_a_string_float_would_read_is_not_a_number() -> None:
    assert not assertion_holds(_field("amount", 1000), TABLES)
    assert assertion_holds(_field("amount", "1e3"), TABLES)


def test_a_field_the_table_lacks_fails_rather_than_reading_null() -> None:
    assert not assertion_holds(_field("colour", None), TABLES)


def test_reply_facts_are_matched_after_normalisation() -> None:
    won = CommunicationFact(kind="mentions", fact="says it is won", any_of=["Closed-Won"])
    assert fact_holds(won, "The deal is now closed\u2013won.")
    blank = CommunicationFact(kind="mentions", fact="says something", any_of=["", " "])
    assert not fact_holds(blank, "Anything at all.")


def test_reply_values_are_read_from_the_final_state() -> None:
    name = CommunicationFact(
        kind="mentions_value",
        fact="gives the name",
        ref={"table": "opportunity", "where": {"opportunity_id": "o-1"}, "field": "name"},
    )
    assert fact_holds(name, "It is the ACME expansion.", TABLES)
    assert not fact_holds(name, "It is the ACME expansion.")  # no state: no value


def test_collateral_follows_the_attribution_rules() -> None:
    before = ROW | {"won": False}
    calls = [
        {
            "tool_call_id": "call-1",
            "tool": "modify_opportunity",
            "changes": [
                {"seq": 1, "table": "opportunity", "op": "UPDATE", "key": "o-1",
                 "before": before, "after": ROW},
                {"seq": 2, "table": "note", "op": "INSERT", "key": "n-1",
                 "before": None, "after": {"note_id": "n-1", "content": "won"}},
            ],
        }
    ]  # fmt: skip
    rules = [AllowedChange(table="opportunity", ops=["UPDATE"], fields=["won"], max_rows=1)]
    assert collateral(rules, calls, TABLES) == ["INSERT note n-1"]
    narrow = [rules[0].model_copy(update={"fields": ["stage"]})]
    assert collateral(narrow, calls, TABLES) == ["UPDATE opportunity o-1", "INSERT note n-1"]
