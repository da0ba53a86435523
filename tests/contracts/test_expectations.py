"""The expectation rules every scorer shares (crmbench_contracts.expectations): pinned
where a looser reading (Python's `==`, `float()`, a plain substring) would differ."""

from __future__ import annotations

from typing import Any

import pytest

from crmbench_contracts.cases import AllowedChange, CommunicationFact, StateAssertion
from crmbench_contracts.expectations import (
    FinalState,
    LoggedChange,
    Unresolvable,
    assertion_holds,
    equal,
    fact_found,
    find_collateral,
    select,
    value_matches,
)

DEAL = {"opportunity_id": "o-1", "name": "Acme expansion", "amount": 75000.0, "won": True}
WORLD = FinalState({"opportunity": [DEAL]})


def _mentions(*phrases: str) -> CommunicationFact:
    return CommunicationFact(kind="mentions", fact="says it", any_of=list(phrases))


def _amount_fact() -> CommunicationFact:
    return CommunicationFact(
        kind="mentions_value",
        fact="gives the amount",
        ref={"table": "opportunity", "where": {"opportunity_id": "o-1"}, "field": "amount"},
    )


# ---------------------------------------------------------------------------- booleans


@pytest.mark.parametrize(
    ("expected", "actual"),
    [(True, 1), (1, True), (False, 0), (0, False), (1.0, True), ([1, True], [1, 1])],
)
def test_a_boolean_never_equals_a_number(expected: Any, actual: Any) -> None:
    assert expected == actual  # what Python's == says
    assert not equal(expected, actual)


def test_a_boolean_field_matches_only_a_boolean() -> None:
    won = StateAssertion(
        kind="field_equals", table="opportunity", where={"opportunity_id": "o-1"}, field="won"
    )
    assert assertion_holds(won.model_copy(update={"value": True}), WORLD)
    assert not assertion_holds(won.model_copy(update={"value": 1}), WORLD)
    assert select("opportunity", {"won": 1}, WORLD) == []
    assert select("opportunity", {"won": True}, WORLD) == [DEAL]


# ---------------------------------------------------------------------------- numeric strings


@pytest.mark.parametrize("text", ["75000", "75000.0", "75000.004", "-0.5", " 75000 ", "75000\n"])
def test_a_decimal_string_counts_as_a_number(text: str) -> None:
    number = float(text)
    assert equal(number, text)


@pytest.mark.parametrize(
    "text", ["1e3", "1E3", "nan", "NaN", "inf", "-Infinity", "1_000", "+1000", ".5", "1000."]
)
def test_a_string_float_would_read_is_not_a_number(text: str) -> None:
    number = float(text)  # Python reads every one of these as a float...
    assert not equal(number, text)  # ...the rules only read [-]digits[.digits]
    assert not equal(1000, text)


def test_numbers_compare_within_a_tolerance_but_never_when_infinite() -> None:
    assert equal(75000, 75000.004) and not equal(75000, 75000.01)
    assert not equal(float("inf"), float("inf"))
    assert not equal(float("nan"), float("nan"))


def test_a_numeric_string_in_the_row_counts_but_an_expected_string_stays_text() -> None:
    assert equal(12, "12")
    assert not equal("12", 12)


def test_operators_compare_by_the_same_rules() -> None:
    assert value_matches({"$in": [1, "x"]}, "1")
    assert not value_matches({"$in": [1]}, True)
    assert value_matches({"$ne": 1}, True)
    assert not value_matches({"$ne": 1000}, "1000")
    assert value_matches({"$ne": 1000}, "1e3")


# ---------------------------------------------------------------------------- reply facts


@pytest.mark.parametrize(
    ("phrase", "reply", "plain_substring"),
    [
        ("Closed-Won", "The deal is now closed\u2013won.", False),  # en dash
        ("Closed-Won", "The deal is now CLOSED\u2011WON.", False),  # non-breaking hyphen
        ("O'Brien", "I wrote to O\u2019Brien.", False),  # curly apostrophe
        ('"Acme"', "Renamed to \u201cAcme\u201d.", False),  # curly quotes
        ("no  results", "There are\nno\tresults for that.", False),  # whitespace collapsed
        ("acme", "Found Acmeville Ltd.", True),  # a substring, not a whole word
    ],
)
def test_a_mentions_fact_matches_after_normalisation(
    phrase: str, reply: str, plain_substring: bool
) -> None:
    assert (phrase.casefold() in reply.casefold()) == plain_substring
    assert fact_found(_mentions(phrase), reply, WORLD) == phrase


def test_blank_phrases_are_not_mentions() -> None:
    assert fact_found(_mentions(" ", "Acme"), "Acme it is", WORLD) == "Acme"
    assert fact_found(_mentions("  ", "Beta"), "Acme it is", WORLD) is None
    with pytest.raises(Unresolvable, match="at least one phrase"):
        fact_found(_mentions("", "   "), "anything", WORLD)


@pytest.mark.parametrize(
    ("reply", "found"),
    [
        ("The amount is 75,000.", "75,000"),
        ("It is worth $75k.", "75k"),
        ("It is 75000.00 in total.", "75000.00"),
        ("It is 175000 in total.", None),  # not inside a longer number
        ("It is 75000.50 in total.", None),
        ("Ref 75000abc", None),  # not inside a word
    ],
)
def test_a_mentions_value_fact_matches_whole_renderings(reply: str, found: str | None) -> None:
    assert fact_found(_amount_fact(), reply, WORLD) == found


def test_a_mentions_value_fact_reads_dates_in_words() -> None:
    world = FinalState({"opportunity": [DEAL | {"amount": "2026-03-31"}]})
    assert fact_found(_amount_fact(), "It closes on March 31, 2026.", world) == "March 31, 2026"


def test_a_mentions_value_fact_needs_its_row() -> None:
    with pytest.raises(Unresolvable, match="no opportunity row"):
        fact_found(_amount_fact(), "75000", FinalState({"opportunity": []}))


def test_a_judge_fact_is_not_matched() -> None:
    with pytest.raises(ValueError, match="LLM judges"):
        fact_found(CommunicationFact(kind="judge", fact="is polite"), "hi", WORLD)


# ---------------------------------------------------------------------------- state and changes


def test_a_field_the_table_lacks_is_a_defect_not_a_match() -> None:
    missing = StateAssertion(
        kind="field_equals",
        table="opportunity",
        where={"opportunity_id": "o-1"},
        field="colour",
        value=None,
    )
    assert not assertion_holds(missing, WORLD)
    with pytest.raises(Unresolvable, match="no field 'colour'"):
        select("opportunity", {"colour": None}, WORLD)


def test_changes_are_attributed_to_rules_with_room() -> None:
    def update(key: str) -> LoggedChange:
        before = DEAL | {"opportunity_id": key}
        after = before | {"amount": 80000.0}
        return LoggedChange("call-1", "modify_opportunity", 1, "opportunity", "UPDATE", key,
                            before, after)  # fmt: skip

    rule = AllowedChange(table="opportunity", ops=["UPDATE"], fields=["amount"], max_rows=1)
    changes = [update("o-1"), update("o-1"), update("o-2")]
    [extra] = find_collateral([rule], changes, WORLD)
    assert (extra.key, extra.tool_call_id) == ("o-2", "call-1")
    assert "max_rows=1" in extra.reason
    narrow = rule.model_copy(update={"fields": ["stage"], "max_rows": None})
    assert [c.key for c in find_collateral([narrow], changes[:1], WORLD)] == ["o-1"]
