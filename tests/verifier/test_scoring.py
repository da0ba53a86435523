"""The structured scorer: every check type with a passing and a failing state, pure."""

from __future__ import annotations

from typing import Any

import pytest

from crmbench_contracts.cases import Branch, CommunicationFact, Outcome
from crmbench_contracts.expectations import find_mention, number_renderings, value_renderings
from crmbench_contracts.replies import stuffed_reply
from crmbench_contracts.rewards import (
    CheckResult,
    JudgeScore,
    OutcomeSource,
    RewardRecord,
    VerificationMode,
    fact_id,
)
from tests.verifier.factories import (
    EMPTY_LOG,
    allow,
    assertion,
    change_log,
    client,
    delete,
    insert,
    judged,
    make_case,
    mentions,
    mentions_value,
    note,
    opportunity,
    reason,
    ref,
    state_of,
    update,
)
from verifier.judges import JudgeOutcome
from verifier.schemas import InvalidEpisodeData
from verifier.scoring import score_case

ACME = client("c-acme", "Acme Corp")
BETA = client("c-beta", "Beta LLC")
OPEN = opportunity("o-open", "c-acme", name="Acme expansion")


def check(record: RewardRecord, check_id: str) -> CheckResult:
    return next(c for c in record.checks if c.check_id == check_id)


def score_state(assertions: list[Any], state: dict[str, Any], reply: str = "") -> RewardRecord:
    return score_case(make_case(state=assertions), state, EMPTY_LOG, reply)


# ---------------------------------------------------------------------------- field_equals


def test_field_equals_passes_when_the_unique_row_has_the_value() -> None:
    a = assertion(
        "field_equals", "opportunity", {"opportunity_id": "o-open"}, field="stage", value="Proposal"
    )
    record = score_state([a], state_of(opportunity=[OPEN | {"stage": "Proposal"}]))
    assert check(record, "state[0]").passed
    assert check(record, "state[0]").actual == "Proposal"
    assert record.score == 1.0 and record.passed


def test_field_equals_fails_with_the_actual_value() -> None:
    a = assertion(
        "field_equals",
        "opportunity",
        {"opportunity_id": "o-open"},
        field="stage",
        value="Proposal",
        description="Stage moved",
    )
    record = score_state([a], state_of(opportunity=[OPEN]))
    result = check(record, "state[0]")
    assert not result.passed and result.score == 0.0 and result.actual == "Qualification"
    assert result.rationale.startswith("Stage moved: ")
    assert '"Qualification"' in result.rationale and '"Proposal"' in result.rationale
    assert record.score == 0.5 and not record.passed  # collateral check (1) + this (0)


@pytest.mark.parametrize("rows", [0, 2])
def test_field_equals_needs_exactly_one_row(rows: int) -> None:
    a = assertion(
        "field_equals", "opportunity", {"client_id": "c-acme"}, field="stage", value="Qualification"
    )
    table = [opportunity(f"o-{i}", "c-acme") for i in range(rows)]
    result = check(score_state([a], state_of(opportunity=table)), "state[0]")
    assert not result.passed
    assert result.actual == {"matches": rows}
    assert "exactly one" in result.rationale


@pytest.mark.parametrize(
    ("row_amount", "passed"),
    [(75000.0, True), (75000.004, True), (75000.01, False), ("75000.00", True), (7500, False)],
)
def test_numbers_compare_as_floats_within_tolerance(row_amount: Any, passed: bool) -> None:
    a = assertion(
        "field_equals", "opportunity", {"opportunity_id": "o-open"}, field="amount", value=75000
    )
    record = score_state([a], state_of(opportunity=[OPEN | {"amount": row_amount}]))
    assert check(record, "state[0]").passed is passed


def test_strings_and_booleans_compare_exactly() -> None:
    exact = assertion("row_exists", "client", {"name": "acme corp"})
    boolean = assertion("row_exists", "client", {"client_id": "c-acme", "vip": 1})
    record = score_state([exact, boolean], state_of(client=[ACME | {"vip": True}]))
    assert not check(record, "state[0]").passed
    assert not check(record, "state[1]").passed


# ---------------------------------------------------------------------------- row_exists / row_absent


def test_row_exists_passes_and_fails_with_the_closest_candidate() -> None:
    good = assertion("row_exists", "client", {"name": "Acme Corp", "status": "Active"})
    bad = assertion("row_exists", "client", {"name": "Acme Corp", "status": "Inactive"})
    record = score_state([good, bad], state_of(client=[ACME, BETA]))
    assert check(record, "state[0]").passed
    assert check(record, "state[0]").actual == {"matches": 1}
    failed = check(record, "state[1]")
    assert not failed.passed
    assert failed.actual == {
        "matches": 0,
        "closest": {"client_id": "c-acme", "name": "Acme Corp", "status": "Active"},
    }
    assert "differs in status" in failed.rationale


def test_row_exists_on_an_empty_table_fails() -> None:
    record = score_state(
        [assertion("row_exists", "quote", {"opportunity_id": "o-open"})], state_of()
    )
    assert not check(record, "state[0]").passed
    assert "empty" in check(record, "state[0]").rationale


def test_row_absent_passes_when_nothing_matches_and_fails_otherwise() -> None:
    absent = assertion("row_absent", "note", {"entity_id": "c-acme"})
    passing = score_state([absent], state_of(note=[note("n-1", "c-beta", "hi")]))
    failing = score_state([absent], state_of(note=[note("n-1", "c-acme", "hi")]))
    assert check(passing, "state[0]").passed and passing.score == 1.0
    result = check(failing, "state[0]")
    assert not result.passed
    assert result.actual == {"matches": 1, "first": {"note_id": "n-1", "entity_id": "c-acme"}}


def test_an_unknown_field_fails_the_check_instead_of_matching_nothing() -> None:
    absent = assertion("row_absent", "client", {"nmae": "Acme Corp"})
    result = check(score_state([absent], state_of(client=[ACME])), "state[0]")
    assert not result.passed
    assert "no field 'nmae'" in result.rationale


# ---------------------------------------------------------------------------- count


def test_count_passes_on_the_exact_number_and_fails_otherwise() -> None:
    two = assertion("count", "opportunity", {"client_id": "c-acme"}, count=2)
    rows = [
        opportunity("o-1", "c-acme"),
        opportunity("o-2", "c-acme"),
        opportunity("o-3", "c-beta"),
    ]
    passing = score_state([two], state_of(opportunity=rows))
    failing = score_state([two], state_of(opportunity=rows[:1]))
    assert check(passing, "state[0]").passed and check(passing, "state[0]").actual == 2
    result = check(failing, "state[0]")
    assert not result.passed and result.actual == 1
    assert "expected 2" in result.rationale


# ---------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("where", "passed"),
    [
        ({"name": {"$icontains": "ACME"}}, True),
        ({"name": {"$icontains": "globex"}}, False),
        ({"status": {"$in": ["Active", "Prospect"]}}, True),
        ({"status": {"$in": ["Inactive", "Prospect"]}}, False),
        ({"status": {"$ne": "Inactive"}}, True),
        ({"status": {"$ne": "Active"}}, False),
        ({"phone": {"$null": True}}, True),
        ({"phone": {"$null": False}}, False),
        ({"status": {"$ne": "Inactive", "$in": ["Active"]}}, True),
    ],
)
def test_operators(where: dict[str, Any], passed: bool) -> None:
    record = score_state([assertion("row_exists", "client", where)], state_of(client=[ACME]))
    assert check(record, "state[0]").passed is passed


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"name": {"$regex": "Ac.*"}}, "unknown operator '$regex'"),
        ({"name": {"$in": "Acme Corp"}}, "$in needs a list"),
        ({"name": {"$null": "yes"}}, "$null needs true or false"),
        ({"name": {"$icontains": 3}}, "$icontains needs a string"),
        ({"name": {"$ne": "x", "plain": 1}}, "mixes operators"),
    ],
)
def test_a_bad_operator_fails_the_check_without_raising(
    where: dict[str, Any], message: str
) -> None:
    for kind in ("row_exists", "row_absent"):
        result = check(
            score_state([assertion(kind, "client", where)], state_of(client=[ACME])), "state[0]"
        )
        assert not result.passed
        assert message in result.rationale


def test_a_bad_operator_fails_even_when_no_row_is_compared() -> None:
    absent = assertion("row_absent", "quote", {"status": {"$like": "Dr%"}})
    result = check(score_state([absent], state_of()), "state[0]")
    assert not result.passed and "unknown operator '$like'" in result.rationale


# ---------------------------------------------------------------------------- $ref


NEW_CLIENT = client("c-new", "Nova Systems")


def test_ref_resolves_to_the_unique_rows_field() -> None:
    linked = assertion(
        "row_exists", "note", {"entity_id": ref("client", {"name": "Nova Systems"}, "client_id")}
    )
    state = state_of(client=[ACME, NEW_CLIENT], note=[note("n-1", "c-new", "kickoff")])
    assert check(score_state([linked], state), "state[0]").passed
    wrong = state_of(client=[ACME, NEW_CLIENT], note=[note("n-1", "c-acme", "kickoff")])
    assert not check(score_state([linked], wrong), "state[0]").passed


def test_ref_to_a_missing_row_fails_with_the_reason() -> None:
    linked = assertion(
        "row_absent", "note", {"entity_id": ref("client", {"name": "Nova Systems"}, "client_id")}
    )
    result = check(score_state([linked], state_of(client=[ACME])), "state[0]")
    assert not result.passed  # an unresolvable $ref never passes, even in row_absent
    assert "$ref: no client row matches" in result.rationale


def test_ref_to_an_ambiguous_row_fails_with_the_reason() -> None:
    linked = assertion(
        "row_exists", "note", {"entity_id": ref("client", {"status": "Active"}, "client_id")}
    )
    state = state_of(client=[ACME, BETA], note=[note("n-1", "c-acme", "x")])
    result = check(score_state([linked], state), "state[0]")
    assert not result.passed
    assert "2 client rows match" in result.rationale


def test_ref_with_a_malformed_body_fails_the_check() -> None:
    bad = assertion("row_exists", "note", {"entity_id": {"$ref": {"table": "client"}}})
    result = check(score_state([bad], state_of(client=[ACME])), "state[0]")
    assert not result.passed and "$ref needs" in result.rationale


def test_ref_as_field_equals_value() -> None:
    same = assertion(
        "field_equals",
        "opportunity",
        {"opportunity_id": "o-open"},
        field="client_id",
        value=ref("client", {"name": "Acme Corp"}, "client_id"),
    )
    assert check(
        score_state([same], state_of(client=[ACME], opportunity=[OPEN])), "state[0]"
    ).passed
    moved = OPEN | {"client_id": "c-beta"}
    assert not check(
        score_state([same], state_of(client=[ACME, BETA], opportunity=[moved])), "state[0]"
    ).passed


# ---------------------------------------------------------------------------- allowed changes


NOTE_RULE = allow("note", ["INSERT"], {"entity_id": "c-acme"}, max_rows=1)
NOTE_EXISTS = assertion("row_exists", "note", {"entity_id": "c-acme"})


def score_changes(
    rules: list[Any],
    state: dict[str, Any],
    log: dict[str, Any],
    assertions: list[Any] | None = None,
) -> RewardRecord:
    case = make_case(state=assertions or [NOTE_EXISTS], allowed=rules)
    return score_case(case, state, log, "")


def test_an_allowed_insert_passes() -> None:
    new = note("n-1", "c-acme", "called")
    record = score_changes(
        [NOTE_RULE], state_of(client=[ACME], note=[new]), change_log([insert("note", new)])
    )
    assert record.collateral == []
    assert check(record, "collateral").passed
    assert check(record, "collateral").actual == {"changes": 1, "collateral": 0}
    assert record.score == 1.0 and record.passed


def test_an_extra_update_of_another_row_is_collateral_and_forces_zero() -> None:
    new = note("n-1", "c-acme", "called")
    log = change_log([insert("note", new)], [update("client", BETA, phone="555-0100")])
    record = score_changes([NOTE_RULE], state_of(client=[ACME, BETA], note=[new]), log)
    assert check(record, "state[0]").passed
    assert not check(record, "collateral").passed
    assert record.score == 0.0 and record.structured_score == 0.0 and not record.passed
    assert record.verdicts == {"0.7": False, "0.8": False, "0.9": False}
    [damage] = record.collateral
    assert (damage.table, damage.op, damage.key, damage.tool_call_id) == (
        "client",
        "UPDATE",
        "c-beta",
        "call-2",
    )
    assert "no allowed change covers the client table" in damage.reason


def test_an_update_outside_the_allowed_fields_is_collateral() -> None:
    rule = allow(
        "opportunity", ["UPDATE"], {"opportunity_id": "o-open"}, fields=["stage", "probability"]
    )
    state_assert = assertion(
        "field_equals", "opportunity", {"opportunity_id": "o-open"}, field="stage", value="Proposal"
    )
    inside = update("opportunity", OPEN, stage="Proposal", probability=50)
    outside = update("opportunity", OPEN, stage="Proposal", amount=90000.0)
    ok = score_changes(
        [rule], state_of(opportunity=[inside["after"]]), change_log([inside]), [state_assert]
    )
    assert ok.score == 1.0
    bad = score_changes(
        [rule], state_of(opportunity=[outside["after"]]), change_log([outside]), [state_assert]
    )
    assert bad.score == 0.0
    assert "changed amount, outside its fields" in bad.collateral[0].reason


def test_changes_beyond_max_rows_are_collateral() -> None:
    first, second = note("n-1", "c-acme", "one"), note("n-2", "c-acme", "two")
    record = score_changes(
        [NOTE_RULE],
        state_of(note=[first, second]),
        change_log([insert("note", first)], [insert("note", second)]),
    )
    [extra] = record.collateral
    assert extra.key == "n-2" and extra.tool_call_id == "call-2"
    assert "max_rows=1" in extra.reason
    assert record.score == 0.0


def test_repeated_changes_to_one_row_use_one_row_of_room() -> None:
    rule = allow("opportunity", ["UPDATE"], {"opportunity_id": "o-open"}, max_rows=1)
    staged = update("opportunity", OPEN, stage="Proposal")
    priced = update("opportunity", staged["after"], amount=80000.0)
    state_assert = assertion("row_exists", "opportunity", {"stage": "Proposal", "amount": 80000})
    record = score_changes(
        [rule],
        state_of(opportunity=[priced["after"]]),
        change_log([staged], [priced]),
        [state_assert],
    )
    assert record.collateral == [] and record.score == 1.0


def test_an_op_not_allowed_is_collateral_and_delete_matches_before() -> None:
    gone = note("n-old", "c-acme", "obsolete")
    delete_rule = allow("note", ["DELETE"], {"entity_id": "c-acme"})
    absent = assertion("row_absent", "note", {"note_id": "n-old"})
    allowed = score_changes([delete_rule], state_of(), change_log([delete("note", gone)]), [absent])
    assert allowed.score == 1.0
    not_allowed = score_changes(
        [NOTE_RULE], state_of(), change_log([delete("note", gone)]), [absent]
    )
    assert "DELETE is not among its ops" in not_allowed.collateral[0].reason
    assert not_allowed.score == 0.0


def test_ref_in_an_allowed_change_resolves_against_the_final_state() -> None:
    rule = allow(
        "note", ["INSERT"], {"entity_id": ref("client", {"name": "Nova Systems"}, "client_id")}
    )
    client_rule = allow("client", ["INSERT"], {"name": "Nova Systems"})
    new_note = note("n-1", "c-new", "welcome")
    state = state_of(client=[ACME, NEW_CLIENT], note=[new_note])
    log = change_log([insert("client", NEW_CLIENT)], [insert("note", new_note)])
    exists = assertion("row_exists", "client", {"name": "Nova Systems"})
    assert score_changes([client_rule, rule], state, log, [exists]).score == 1.0
    stray = note("n-2", "c-acme", "oops")
    log = change_log([insert("client", NEW_CLIENT)], [insert("note", stray)])
    record = score_changes(
        [client_rule, rule], state_of(client=[ACME, NEW_CLIENT], note=[stray]), log, [exists]
    )
    assert [c.key for c in record.collateral] == ["n-2"]
    assert "does not match its where" in record.collateral[0].reason


# ---------------------------------------------------------------------------- communication


def test_mentions_is_case_insensitive_and_ignores_extra_whitespace() -> None:
    case = make_case(
        state=[assertion("row_exists", "client", {"name": "Acme Corp"})],
        communicate=[mentions("closed won", "won the deal")],
    )
    state = state_of(client=[ACME])
    passing = score_case(case, state, EMPTY_LOG, "Done: the deal is now\n  CLOSED\tWon.")
    assert check(passing, "communicate[0]").passed
    assert check(passing, "communicate[0]").actual == "closed won"
    failing = score_case(case, state, EMPTY_LOG, "Done, the deal moved to Proposal.")
    result = check(failing, "communicate[0]")
    assert not result.passed and "none of" in result.rationale
    assert failing.score == pytest.approx(2 / 3, abs=1e-6)


def test_mentions_without_phrases_fails() -> None:
    case = make_case(
        communicate=[mentions(" ")],
        state=[assertion("row_exists", "client", {"name": "Acme Corp"})],
    )
    result = check(score_case(case, state_of(client=[ACME]), EMPTY_LOG, " "), "communicate[0]")
    assert not result.passed and "at least one phrase" in result.rationale


AMOUNT = mentions_value("opportunity", {"opportunity_id": "o-open"}, "amount")


@pytest.mark.parametrize(
    ("reply", "passed"),
    [
        ("The amount is 75000.", True),
        ("The amount is 75000.0 now.", True),
        ("The amount is 75,000.", True),
        ("The amount is $75,000.00.", True),
        ("It's worth 75K.", True),
        ("It is 75000 dollars", True),
        ("The amount is 175000.", False),
        ("The amount is 75,000.50.", False),
        ("The amount is 7,500.", False),
        ("No amount given.", False),
    ],
)
def test_mentions_value_accepts_common_number_renderings(reply: str, passed: bool) -> None:
    case = make_case(
        communicate=[AMOUNT],
        state=[assertion("row_exists", "opportunity", {"opportunity_id": "o-open"})],
    )
    record = score_case(case, state_of(opportunity=[OPEN]), EMPTY_LOG, reply)
    assert check(record, "communicate[0]").passed is passed
    assert check(record, "communicate[0]").expected["value"] == 75000.0


def test_number_and_date_renderings() -> None:
    assert {"75000", "75,000", "75,000.00", "75k"} <= set(number_renderings(75000))
    assert {"1.5m", "1,500k", "1,500,000"} <= set(number_renderings(1_500_000))
    assert {"1234.50", "1,234.5"} <= set(number_renderings(1234.5))
    assert "March 31, 2026" in value_renderings("2026-03-31")
    assert find_mention("Closes on Mar 31, 2026.", value_renderings("2026-03-31")) is not None
    assert find_mention("quote Q-10 is ready", ["Q-1"]) is None


def test_mentions_value_of_a_created_row_id() -> None:
    fact = mentions_value("client", {"name": "Nova Systems"}, "client_id")
    case = make_case(
        communicate=[fact], state=[assertion("row_exists", "client", {"name": "Nova Systems"})]
    )
    state = state_of(client=[ACME, NEW_CLIENT])
    assert score_case(case, state, EMPTY_LOG, "Created it (id C-NEW).").passed
    missing = score_case(case, state_of(client=[ACME]), EMPTY_LOG, "Created it (id c-new).")
    result = check(missing, "communicate[0]")
    assert not result.passed and "$ref: no client row matches" in result.rationale


# ---------------------------------------------------------------------------- judges, score


STATE_OK = [assertion("row_exists", "client", {"name": "Acme Corp"})]


def test_judge_facts_are_skipped_without_judges() -> None:
    case = make_case(state=STATE_OK, communicate=[judged()])
    record = score_case(case, state_of(client=[ACME]), EMPTY_LOG, "sure")
    skipped = check(record, "communicate[0]")
    assert skipped.kind == "judge_skipped" and skipped.weight == 0.0
    assert record.score == 1.0 and record.judges == [] and record.arbiter is None


def test_judges_blend_into_the_score() -> None:
    case = make_case(state=STATE_OK, communicate=[judged()])
    outcome = JudgeOutcome(
        judges=[
            JudgeScore(judge="a", score=0.5, uncertainty=0.1, rationale="meh"),
            JudgeScore(judge="b", score=0.7, uncertainty=0.1, rationale="ok"),
        ]
    )
    record = score_case(case, state_of(client=[ACME]), EMPTY_LOG, "sure", judges=outcome)
    assert record.structured_score == 1.0
    assert record.score == pytest.approx(0.8 * 1.0 + 0.2 * 0.6)
    assert check(record, "communicate[0]").kind == "judge"
    assert [j.judge for j in record.judges] == ["a", "b"]
    heavy = score_case(
        case, state_of(client=[ACME]), EMPTY_LOG, "sure", judges=outcome, judge_weight=0.5
    )
    assert heavy.score == pytest.approx(0.8)


def _judge(name: str, score: float) -> JudgeScore:
    return JudgeScore(judge=name, score=score, uncertainty=0.0, rationale="")


@pytest.mark.parametrize(
    ("outcome", "mode"),
    [
        (None, VerificationMode.OFFLINE),
        (JudgeOutcome(), VerificationMode.OFFLINE),  # judges configured, none listed
        (JudgeOutcome(judges=[_judge("a", 0.9), _judge("b", 0.8)]), VerificationMode.JUDGES),
        (
            JudgeOutcome(
                judges=[_judge("a", 1.0), _judge("b", 0.2)],
                arbiter=_judge("arbiter", 0.5),
                disagreed=True,
            ),
            VerificationMode.JUDGES_ARBITER,
        ),
    ],
)
def test_the_record_says_how_the_reply_was_read(
    outcome: JudgeOutcome | None, mode: VerificationMode
) -> None:
    case = make_case(state=STATE_OK, communicate=[judged()])
    record = score_case(case, state_of(client=[ACME]), EMPTY_LOG, "sure", judges=outcome)
    assert record.verification_mode is mode
    assert record.model_dump(mode="json")["verification_mode"] == mode.value


def test_an_older_record_without_the_mode_gets_the_one_its_judges_imply() -> None:
    case = make_case(state=STATE_OK)
    offline = score_case(case, state_of(client=[ACME]), EMPTY_LOG, "").model_dump(mode="json")
    del offline["verification_mode"]
    assert RewardRecord.model_validate(offline).verification_mode is VerificationMode.OFFLINE
    judged_ = {**offline, "judges": [_judge("a", 1.0).model_dump()]}
    assert RewardRecord.model_validate(judged_).verification_mode is VerificationMode.JUDGES
    arbitrated = {**judged_, "arbiter": _judge("arbiter", 1.0).model_dump()}
    assert (
        RewardRecord.model_validate(arbitrated).verification_mode is VerificationMode.JUDGES_ARBITER
    )


def test_collateral_forces_zero_even_with_perfect_judges() -> None:
    case = make_case(state=STATE_OK)
    perfect = JudgeOutcome(judges=[JudgeScore(judge="a", score=1.0, uncertainty=0.0, rationale="")])
    log = change_log([update("client", BETA, phone="1")])
    record = score_case(case, state_of(client=[ACME, BETA]), log, "", judges=perfect)
    assert record.score == 0.0 and record.collateral


def test_weighted_mean_and_verdict_thresholds() -> None:
    passing = assertion("row_exists", "client", {"name": "Acme Corp"}, weight=2.0)
    failing = assertion("row_exists", "client", {"name": "Nope"}, weight=1.0)
    record = score_state([passing, failing], state_of(client=[ACME]))
    assert record.score == 0.75  # (2 + collateral 1) / 4
    assert record.verdicts == {"0.7": True, "0.8": False, "0.9": False}
    assert not record.passed


def test_a_score_of_exactly_the_threshold_passes() -> None:
    passing = assertion("row_exists", "client", {"name": "Acme Corp"}, weight=8.0)
    failing = assertion("row_exists", "client", {"name": "Nope"}, weight=1.0)
    record = score_state([passing, failing], state_of(client=[ACME]))
    assert record.score == 0.9 and record.passed
    assert record.verdicts == {"0.7": True, "0.8": True, "0.9": True}


def test_a_case_that_checks_nothing_scores_zero() -> None:
    record = score_case(make_case(communicate=[judged()]), state_of(), EMPTY_LOG, "")
    assert record.score == 0.0 and not record.passed
    assert check(record, "case").kind == "no_checks"


def test_episode_id_and_case_id_are_recorded() -> None:
    record = score_case(
        make_case(state=STATE_OK), state_of(client=[ACME]), EMPTY_LOG, "", episode_id="ep_1"
    )
    assert (record.case_id, record.episode_id) == ("vfy-001", "ep_1")


@pytest.mark.parametrize(
    ("state", "changes", "message"),
    [
        ({"today": "x"}, EMPTY_LOG, "state at tables"),
        ({"tables": {"client": ["not a row"]}}, EMPTY_LOG, "state at tables.client.0"),
        (
            state_of(),
            {"tool_calls": [{"changes": [{"table": "client", "op": "MERGE", "key": "k"}]}]},
            "changes at",
        ),
        (
            state_of(),
            {
                "tool_calls": [
                    {"changes": [{"table": "client", "op": "UPDATE", "key": "k", "after": {}}]}
                ]
            },
            "needs `before`",
        ),
    ],
)
def test_malformed_state_or_changes_raise_invalid_episode_data(
    state: dict[str, Any], changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidEpisodeData) as raised:
        score_case(make_case(state=STATE_OK), state, changes, "")
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_judge_weight_must_be_a_share() -> None:
    with pytest.raises(ValueError, match="judge_weight"):
        score_case(make_case(state=STATE_OK), state_of(), EMPTY_LOG, "", judge_weight=1.5)


# ---------------------------------------------------------------------------- outcome gate

REFUSE = (Outcome.REFUSED, Outcome.NEEDS_CLARIFICATION)
UNCHANGED = assertion(
    "field_equals", "opportunity", {"opportunity_id": "o-open"}, field="probability", value=25
)


def refusal_case(outcomes: tuple[Outcome, ...] = REFUSE) -> Any:
    return make_case(
        state=[UNCHANGED], communicate=[reason("PROBABILITY_OUT_OF_RANGE")], outcomes=outcomes
    )


def test_an_honest_refusal_in_plain_words_passes() -> None:
    reply = "Probability has to be from 0% to 100%, so I left it as it was."
    record = score_case(refusal_case(), state_of(opportunity=[OPEN]), EMPTY_LOG, reply)
    assert record.claimed_outcome is Outcome.REFUSED
    assert record.outcome_source is OutcomeSource.OFFLINE
    assert check(record, "outcome").passed
    assert record.score == 1.0 and record.branch == "primary"


def test_a_false_success_claim_fails_the_gate_whatever_else_holds() -> None:
    reply = "Done! The probability is now between 0 and 100, all set."
    record = score_case(refusal_case(), state_of(opportunity=[OPEN]), EMPTY_LOG, reply)
    gate = check(record, "outcome")
    assert record.claimed_outcome is Outcome.COMPLETED
    assert not gate.passed and gate.weight == 0
    assert "accepts refused, needs_clarification" in gate.rationale
    assert check(record, "state[0]").passed  # the state alone would have passed
    assert record.score == 0.0 and record.structured_score == 0.0 and not record.passed


def test_a_stuffed_reply_earns_no_reason() -> None:
    every_refusal = (*REFUSE, Outcome.NEEDS_APPROVAL)  # whichever way its claim is read
    record = score_case(
        refusal_case(every_refusal), state_of(opportunity=[OPEN]), EMPTY_LOG, stuffed_reply()
    )
    assert check(record, "outcome").passed
    fact = check(record, "communicate[0]")
    assert not fact.passed and "unrelated reasons" in fact.rationale
    # the unchanged state (1) and collateral (1) against the reason's weight (2)
    assert record.score == pytest.approx(2 / 4) and not record.passed


def test_claiming_success_when_nothing_changed_fails_a_branch_that_expects_changes() -> None:
    moved = assertion(
        "field_equals", "opportunity", {"opportunity_id": "o-open"}, field="stage", value="Proposal"
    )
    case = make_case(
        state=[moved],
        allowed=[allow("opportunity", ["UPDATE"], {"opportunity_id": "o-open"}, fields=["stage"])],
        communicate=[mentions("Proposal")],
    )
    # the state already reads Proposal (e.g. a seed that was already there) but no call changed it
    state = state_of(opportunity=[OPEN | {"stage": "Proposal"}])
    record = score_case(case, state, EMPTY_LOG, "Done, it is now in Proposal.")
    assert not check(record, "outcome").passed
    assert "changed nothing" in check(record, "outcome").rationale
    assert record.score == 0.0
    log = change_log([update("opportunity", OPEN, stage="Proposal")])
    assert score_case(case, state, log, "Done, it is now in Proposal.").score == 1.0


def test_an_affirmed_fact_is_not_earned_by_a_negated_mention() -> None:
    fact = CommunicationFact(kind="mentions", fact="confirms", any_of=["Proposal"], affirmed=True)
    case = make_case(communicate=[fact], outcomes=(Outcome.COMPLETED, Outcome.REFUSED))
    state = state_of(opportunity=[OPEN])
    negated = score_case(case, state, EMPTY_LOG, "I could not move it to Proposal.")
    assert not check(negated, "communicate[0]").passed
    affirmed = score_case(case, state, EMPTY_LOG, "It sits in Proposal now.")
    assert check(affirmed, "communicate[0]").passed


def test_the_best_branch_decides_and_every_branch_is_reported() -> None:
    rounded = Branch(
        name="rounds",
        outcomes=[Outcome.COMPLETED],
        state=[
            assertion(
                "field_equals",
                "opportunity",
                {"opportunity_id": "o-open"},
                field="probability",
                value=46,
            )
        ],
        allowed_changes=[
            allow("opportunity", ["UPDATE"], {"opportunity_id": "o-open"}, fields=["probability"])
        ],
        communicate=[reason("PROBABILITY_DECIMAL")],
    )
    case = make_case(
        state=[UNCHANGED],
        communicate=[reason("PROBABILITY_DECIMAL")],
        outcomes=REFUSE,
        alternatives=[rounded],
    )
    log = change_log([update("opportunity", OPEN, probability=46)])
    state = state_of(opportunity=[OPEN | {"probability": 46}])
    record = score_case(case, state, log, "I rounded it to 46%, since it must be a whole number.")
    assert record.branch == "rounds" and record.score == 1.0
    assert [(b.name, b.outcome_accepted) for b in record.branches] == [
        ("primary", False),
        ("rounds", True),
    ]
    asked = score_case(
        case, state_of(opportunity=[OPEN]), EMPTY_LOG, "It must be a whole number: 45 or 46?"
    )
    assert asked.branch == "primary" and asked.score == 1.0
    assert asked.claimed_outcome is Outcome.NEEDS_CLARIFICATION


def test_the_judges_read_the_outcome_and_the_facts_when_they_give_them() -> None:
    verdict = JudgeScore(
        judge="j1",
        score=1.0,
        uncertainty=0.0,
        rationale="ok",
        outcome=Outcome.REFUSED,
        facts={fact_id("primary", 0): True},
    )
    judges = JudgeOutcome(judges=[verdict, verdict.model_copy(update={"judge": "j2"})])
    # words the offline reader would take as a success claim and no reason
    reply = "All set: I kept it at 25 because 150 is more than anyone can have."
    record = score_case(
        refusal_case(), state_of(opportunity=[OPEN]), EMPTY_LOG, reply, judges=judges
    )
    assert record.claimed_outcome is Outcome.REFUSED
    assert record.outcome_source is OutcomeSource.JUDGES
    assert check(record, "communicate[0]").passed
    assert record.verification_mode is VerificationMode.JUDGES
    assert record.score == 1.0


def test_judges_cannot_earn_a_reason_for_a_stuffed_reply() -> None:
    verdict = JudgeScore(
        judge="j1",
        score=1.0,
        uncertainty=0.0,
        rationale="ok",
        outcome=Outcome.REFUSED,
        facts={fact_id("primary", 0): True},
    )
    judges = JudgeOutcome(judges=[verdict])
    record = score_case(
        refusal_case(), state_of(opportunity=[OPEN]), EMPTY_LOG, stuffed_reply(), judges=judges
    )
    assert not check(record, "communicate[0]").passed


def test_without_a_judge_verdict_the_offline_reader_decides() -> None:
    mute = JudgeScore(judge="j1", score=1.0, uncertainty=0.0, rationale="score only")
    reply = "Done! I set the probability."
    record = score_case(
        refusal_case(),
        state_of(opportunity=[OPEN]),
        EMPTY_LOG,
        reply,
        judges=JudgeOutcome(judges=[mute]),
    )
    assert record.outcome_source is OutcomeSource.OFFLINE
    assert record.claimed_outcome is Outcome.COMPLETED and record.score == 0.0
