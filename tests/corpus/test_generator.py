"""The corpus generator: deterministic, weighted, and what the committed corpus must hold:
outcomes the reference reply claims, facts it earns, alternative branches a careful reply
meets, tight allowed changes in complex flows, and seed rows that look like world rows."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from crm_api.domain import WORLD_DATE
from crm_api.tools.quotes import DEFAULT_PREFIX
from crm_api.world import build_world, sales_reps
from crmbench.cli import app
from crmbench_contracts.cases import FAILURE_CATEGORIES, Branch, Case, Difficulty, Outcome
from crmbench_contracts.expectations import (
    FinalState,
    LoggedChange,
    Unresolvable,
    evaluate_state,
    find_collateral,
    read_fact,
)
from crmbench_contracts.replies import classify_outcome
from crmbench_corpus.builder import CLIENT_AGE_DAYS, DEFAULT_QUOTE_PREFIX, WORLD_TODAY
from crmbench_corpus.failures import ASKS, MANAGER, REFUSES
from crmbench_corpus.generator import (
    CHANGES,
    DEFAULT_COUNT,
    DEFAULT_SEED,
    GENERATOR_VERSION,
    HOLDOUT_FAMILY,
    HOLDOUT_TASKS,
    RARE_TASK_FLOOR,
    SEED_SPLIT_SIZE,
    SUCCESS_SHARE,
    allocate,
    generate,
    task_counts,
)
from crmbench_corpus.store import case_line, default_corpus_dir, load_cases, load_manifest
from crmbench_corpus.success import STAGE_MOVE, SUCCESS_BLUEPRINTS
from tests.conftest import REPO_ROOT

TASKS_CSV = REPO_ROOT / "corpus" / "reference" / "agent_tasks.csv"


@pytest.fixture(scope="module")
def committed() -> list[Case]:
    return load_cases(default_corpus_dir())


def test_the_committed_corpus_is_exactly_what_the_generator_makes(committed: list[Case]) -> None:
    fresh = generate(DEFAULT_SEED, len(committed), TASKS_CSV)
    expected = "".join(case_line(c) + "\n" for c in fresh)
    on_disk = (default_corpus_dir() / "cases.jsonl").read_text(encoding="utf-8")
    assert expected == on_disk


def test_same_seed_same_bytes_other_seed_other_cases() -> None:
    first = [case_line(c) for c in generate(7, 200, TASKS_CSV)]
    again = [case_line(c) for c in generate(7, 200, TASKS_CSV)]
    other = [case_line(c) for c in generate(8, 200, TASKS_CSV)]
    assert first == again
    assert first != other


def test_acceptance_mix(committed: list[Case]) -> None:
    total = len(committed)
    assert total == DEFAULT_COUNT >= 1500
    success = sum(c.failure is None for c in committed)
    assert success == round(total * SUCCESS_SHARE)
    failures = Counter(c.failure.category for c in committed if c.failure)
    assert failures == allocate(dict.fromkeys(FAILURE_CATEGORIES, 1), total - success, 0)
    assert {c.split.value for c in committed} == {"seed", "eval", "holdout"}
    assert {c.difficulty.value for c in committed} == {"simple", "medium", "complex"}
    holdout = sum(c.split.value == "holdout" for c in committed) / total
    assert 0.10 <= holdout <= 0.15
    assert sum(c.split.value == "seed" for c in committed) == SEED_SPLIT_SIZE
    # holdout is chosen by task and failure family, not at random
    for case in committed:
        if case.split.value == "holdout":
            assert (case.task_category in HOLDOUT_TASKS and case.failure is None) or (
                case.failure is not None and case.failure.family.value == HOLDOUT_FAMILY
            )


def test_the_manifest_says_which_version_and_what_changed() -> None:
    manifest = load_manifest()
    assert manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["changes"] == CHANGES and all(note.strip() for note in CHANGES)


def test_tasks_are_weighted_by_the_agent_logs_with_a_floor(committed: list[Case]) -> None:
    counts = task_counts(TASKS_CSV)
    successes = Counter(c.task_category for c in committed if c.failure is None)
    assert set(successes) == set(SUCCESS_BLUEPRINTS)
    assert min(successes.values()) >= RARE_TASK_FLOOR
    frequent = sorted(counts, key=counts.__getitem__, reverse=True)[:3]
    rare = sorted(counts, key=counts.__getitem__)[:3]
    assert min(successes[t] for t in frequent) > max(successes[t] for t in rare)


def test_allocate_respects_floor_and_total() -> None:
    shares = allocate({"a": 90, "b": 9, "c": 1}, 100, 5)
    assert sum(shares.values()) == 100
    assert min(shares.values()) >= 5
    assert shares["a"] > shares["b"] > shares["c"] - 1
    with pytest.raises(ValueError):
        allocate({"a": 1, "b": 1}, 3, 2)


def test_every_case_is_complete(committed: list[Case]) -> None:
    ids = [c.case_id for c in committed]
    assert len(ids) == len(set(ids))
    for case in committed:
        assert case.turns and all(t.content.strip() for t in case.turns)
        checks = case.expected.state or case.expected.communicate
        assert checks, f"{case.case_id} checks nothing"
        assert case.expected.reference_reply
        if case.failure is not None:
            assert case.failure.trap.naive_actions, case.case_id
            assert case.failure.family == FAILURE_CATEGORIES[case.failure.category]


def test_stats_json_matches_the_manifest() -> None:
    result = CliRunner().invoke(app, ["cases", "stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    for key in ("total", "success_share", "by_split", "by_category", "by_failure_category",
                "by_difficulty"):  # fmt: skip
        assert key in stats
    assert stats == load_manifest()
    human = CliRunner().invoke(app, ["cases", "stats"])
    assert human.exit_code == 0 and "success paths" in human.output


def test_stats_on_a_missing_corpus_is_a_clear_error(tmp_path: object) -> None:
    result = CliRunner().invoke(app, ["cases", "stats", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "cases generate" in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------------------- replies


def _seed_state(case: Case, **changed: dict[str, Any]) -> FinalState:
    """The case's seed rows as a state, with some rows' fields changed ({id: fields})."""
    tables: dict[str, list[dict[str, Any]]] = {}
    for table, rows in case.seed.items():
        key = f"{table}_id"
        tables[table] = [{**row, **changed.get(row[key], {})} for row in rows]
    return FinalState(tables)


def _seed_ids(case: Case) -> set[str]:
    return {row[f"{table}_id"] for table, rows in case.seed.items() for row in rows}


def _names_seed_row(case: Case, where: dict[str, Any]) -> bool:
    return any(isinstance(v, str) and v in _seed_ids(case) for v in where.values())


def test_every_reference_reply_claims_an_outcome_its_case_accepts(committed: list[Case]) -> None:
    wrong = [
        (case.case_id, reading.outcome.value, case.expected.reference_reply)
        for case in committed
        if (reading := classify_outcome(case.expected.reference_reply)).outcome
        not in case.expected.outcomes
    ]
    assert not wrong, wrong[:5]


def test_every_reference_reply_earns_its_facts(committed: list[Case]) -> None:
    """Reason facts by the offline lexicon, mentions by their phrases; a mentions_value
    fact only where its row is seeded (rows the agent creates exist after the episode)."""
    missed = []
    for case in committed:
        for fact in case.expected.communicate:
            if fact.ref is not None and not _names_seed_row(case, fact.ref.where):
                continue
            reading = read_fact(fact, case.expected.reference_reply, _seed_state(case))
            if reading.found is None:
                missed.append((case.case_id, fact.fact, reading.detail))
    assert not missed, missed[:5]


def test_facts_about_seed_rows_resolve_in_every_branch(committed: list[Case]) -> None:
    checked = 0
    for case in committed:
        for branch in case.expected.branches():
            for fact in branch.communicate:
                if fact.ref is not None and _names_seed_row(case, fact.ref.where):
                    try:
                        read_fact(fact, "", _seed_state(case))
                    except Unresolvable as exc:  # pragma: no cover - the failure message
                        pytest.fail(f"{case.case_id} {branch.name}: {exc}")
                    checked += 1
    assert checked  # the rounding branches name their seeded deal


ASKING_CATEGORIES = {"MISSING_REQUIRED_FIELD", "MISSING_FILE_EXTENSION"}
"""Failure categories where the request lacks a fact: the reply asks for it first."""


def test_outcomes_follow_the_right_behaviour(committed: list[Case]) -> None:
    for case in committed:
        outcomes = tuple(case.expected.outcomes)
        if case.failure is None or case.expected.allowed_changes:
            assert outcomes == (Outcome.COMPLETED,), case.case_id
            continue
        category, behaviour = case.failure.category, case.failure.trap.right_behaviour
        if category == "PERMISSION_DENIED":
            assert behaviour == "ask_manager", case.case_id
        if behaviour == "ask_manager":
            assert outcomes == MANAGER, case.case_id
        else:
            assert outcomes == (ASKS if category in ASKING_CATEGORIES else REFUSES), case.case_id
        # The explanation is the category's reason, read by the lexicon, not a phrase list.
        assert [f.kind for f in case.expected.communicate] == ["reason"], case.case_id
        assert all(f.rule == category and f.weight == 2.0 for f in case.expected.communicate)


def _careful_reply(case: Case, branch: Branch) -> tuple[str, FinalState]:
    """What a careful operator taking `branch` would say, and the state it leaves."""
    subject = next((f.subject_any[0] for f in branch.communicate if f.subject_any), "")
    if branch.name == "rounds":
        value = branch.state[0].value
        rounded = value["$in"][-1] if isinstance(value, dict) else value
        opportunity_id = branch.state[0].where["opportunity_id"]
        reply = f"I rounded it to {rounded}% and saved it, since a probability has to be a whole number."
        return reply, _seed_state(case, **{opportunity_id: {"probability": rounded}})
    replies = {
        "asks first": f"Clients have no {subject} field in this CRM. Should I create the client without it?",
        "maps to Closed-Won": "I can't mark it Closed-Won: a deal has to reach Negotiation with an approved quote first.",
        "records it in a note": f"Opportunities have no {subject} field, so I added a note with it on the deal.",
        "adds the contact without the email": (
            f"I added {next((f.any_of[0] for f in branch.communicate if f.kind == 'mentions'), '')}. "
            "I left the email out because the address you gave is not a valid email address."
        ),
    }
    return replies[branch.name], _seed_state(case)


def test_alternative_branches_accept_a_careful_reply(committed: list[Case]) -> None:
    """Each alternative is reachable in plain words: the reply claims one of its outcomes
    and earns its facts (the lexicon and the branch agree)."""
    seen: Counter[str] = Counter()
    for case in committed:
        for branch in case.expected.alternatives:
            seen[branch.name] += 1
            reply, world = _careful_reply(case, branch)
            assert classify_outcome(reply).outcome in branch.outcomes, (case.case_id, reply)
            for fact in branch.communicate:
                assert read_fact(fact, reply, world).found is not None, (case.case_id, fact.fact)
    assert set(seen) == {
        "rounds",
        "asks first",
        "maps to Closed-Won",
        "records it in a note",
        "adds the contact without the email",
    }
    by_category = Counter(
        c.failure.category for c in committed if c.failure and c.expected.alternatives
    )
    for category in ("PROBABILITY_DECIMAL", "EXTRA_FIELD", "UNKNOWN_FIELD_UPDATE"):
        assert by_category[category] == sum(
            c.failure is not None and c.failure.category == category for c in committed
        )
    won = [c for c in committed if c.failure and "'Won'" in c.turns[0].content]
    assert won and all(c.expected.alternatives for c in won)
    # No seeded deal of a 'Won' case could legally close: open, and no approved quote.
    for case in won:
        assert all(o["stage"] != "Negotiation" for o in case.seed["opportunity"])
        assert all(q["status"] != "Approved" for q in case.seed.get("quote", []))


# ---------------------------------------------------------------------------- complex flows


class _Episode:
    """An episode played in memory: the seed, the rows a run writes, and its change log."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.tables = {t: [dict(r) for r in rows] for t, rows in case.seed.items()}
        self.log: list[LoggedChange] = []

    def _record(self, table: str, op: str, before: Any, after: dict[str, Any]) -> None:
        key = after[f"{table}_id"]
        seq = len(self.log) + 1
        self.log.append(LoggedChange(f"call-{seq}", None, seq, table, op, key, before, after))

    def insert(self, table: str, row: dict[str, Any]) -> None:
        self.tables.setdefault(table, []).append(row)
        self._record(table, "INSERT", None, dict(row))

    def update(self, table: str, key: str, **values: Any) -> None:
        row = next(r for r in self.tables[table] if r[f"{table}_id"] == key)
        before = dict(row)
        row.update(values)
        self._record(table, "UPDATE", before, dict(row))

    def verdict(self) -> tuple[list[str], list[str]]:
        """(collateral reasons, failed state assertions) of the primary branch."""
        world = FinalState(self.tables)
        expected = self.case.expected
        collateral = find_collateral(expected.allowed_changes, self.log, world)
        failed = [a.description for a in expected.state if not evaluate_state(a, world)[0]]
        return [c.reason for c in collateral], failed


def _args(case: Case, tool: str) -> dict[str, Any]:
    return next(a.args for a in case.expected.reference_actions if a.tool == tool)


def _quote(case: Case, number: int, **fields: Any) -> dict[str, Any]:
    """The quote create_quote makes from the case's reference arguments."""
    args = _args(case, "create_quote")
    return {
        "quote_id": f"new-quote-{number}",
        "opportunity_id": case.seed["opportunity"][0]["opportunity_id"],
        "version": str(number),
        "amount": args["amount"],
        "status": "Draft",
        "valid_until": args.get("valid_until"),
        "created_date": f"{case.today.isoformat()}T12:00:00+00:00",
        "quote_prefix": DEFAULT_PREFIX,
        **fields,
    }


def _complex(committed: list[Case], task: str) -> list[Case]:
    found = [
        c
        for c in committed
        if c.task_category == task and c.failure is None and c.difficulty == Difficulty.COMPLEX
    ]
    assert found
    return found


@pytest.mark.parametrize("times", [1, 2])
def test_a_quote_created_and_sent_is_one_row(committed: list[Case], times: int) -> None:
    """CRM-00813's shape: creating and sending the quote once passes; twice is collateral."""
    for case in _complex(committed, "CREATE QUOTE"):
        episode = _Episode(case)
        for number in range(1, times + 1):
            episode.insert("quote", _quote(case, number))
            episode.update("quote", f"new-quote-{number}", status="Sent")
        collateral, failed = episode.verdict()
        if times == 1:
            assert not collateral and not failed, case.case_id
        else:
            assert collateral and failed, case.case_id


def _deal_flow(case: Case, variant: str) -> _Episode:
    """The deal flow of a complex MODIFY OPPORTUNITY case as the reference plays it, with
    a variant: `probability` moves it with the stage, `three quotes` adds two unasked
    quotes, `prefix` gives the quote an unasked prefix."""
    episode = _Episode(case)
    opp = case.seed["opportunity"][0]
    key = opp["opportunity_id"]
    companion = {"probability": 75} if variant == "probability" else {}
    episode.update("opportunity", key, stage="Negotiation", **companion)
    fields = {"quote_prefix": "ACME"} if variant == "prefix" else {}
    episode.insert("quote", _quote(case, 1, **fields))
    episode.update("quote", "new-quote-1", status="Sent")
    episode.update("quote", "new-quote-1", status="Approved")
    if variant == "three quotes":
        episode.insert("quote", _quote(case, 2))
        episode.insert("quote", _quote(case, 3))
    companion = {"probability": 100} if variant == "probability" else {}
    episode.update("opportunity", key, stage="Closed-Won", **companion)
    contract = _args(case, "create_contract")
    episode.insert(
        "contract",
        {
            "contract_id": "new-contract",
            "client_id": opp["client_id"],
            "opportunity_id": key,
            "start_date": None,
            "end_date": None,
            "value": contract["value"],
            "status": contract["status"],
            "document_url": None,
        },
    )
    document = _args(case, "upload_document")
    episode.insert(
        "document",
        {
            "document_id": "new-document",
            "entity_type": document["entity_type"],
            "entity_id": "new-contract",
            "file_name": document["file_name"],
            "uploaded_by": case.actor.name,
            "uploaded_at": f"{case.today.isoformat()}T12:00:00+00:00",
            "file_url": None,
        },
    )
    return episode


@pytest.mark.parametrize(
    ("variant", "passes"),
    [("as asked", True), ("probability", True), ("three quotes", False), ("prefix", False)],
)
def test_the_deal_flow_allows_what_the_request_implies(
    committed: list[Case], variant: str, passes: bool
) -> None:
    """CRM-00446's shape: probability moving with the stage passes; three quotes (one
    approved) or an unasked quote prefix fail."""
    for case in _complex(committed, "MODIFY OPPORTUNITY"):
        collateral, failed = _deal_flow(case, variant).verdict()
        assert (not collateral and not failed) == passes, (case.case_id, collateral, failed)
        opp_rule = case.expected.allowed_changes[0]
        assert opp_rule.table == "opportunity" and opp_rule.fields == STAGE_MOVE


def test_created_rows_pin_what_the_request_implies(committed: list[Case]) -> None:
    for case in committed:
        for rule in case.expected.allowed_changes:
            if "INSERT" in rule.ops:
                assert rule.max_rows == 1, case.case_id  # a duplicate is collateral
            if rule.table == "quote" and "INSERT" in rule.ops:
                assert rule.where["quote_prefix"] == DEFAULT_QUOTE_PREFIX, case.case_id
                assert "valid_until" in rule.where, case.case_id


# ---------------------------------------------------------------------------- seed rows


def test_seed_rows_look_like_world_rows(committed: list[Case]) -> None:
    """No answer leaks through the seed: ids, owners and timestamps as the world has them."""
    assert WORLD_TODAY == WORLD_DATE and DEFAULT_QUOTE_PREFIX == DEFAULT_PREFIX
    world = build_world()
    owners = set(sales_reps())
    oldest = WORLD_TODAY - timedelta(days=CLIENT_AGE_DAYS[1])
    world_prefixes = {q["quote_prefix"] for q in world["quote"]}
    stamps = []
    for case in committed:
        for table, rows in case.seed.items():
            for row in rows:
                assert uuid.UUID(row[f"{table}_id"]).version == 4
                if "owner" in row:
                    assert row["owner"] in owners, case.case_id
                if "created_date" in row:
                    created = datetime.fromisoformat(row["created_date"])
                    assert oldest <= created.date() < WORLD_TODAY, case.case_id
                    assert 13 <= created.hour <= 23, case.case_id  # the world's hours
                    stamps.append(created)
        for quote in case.seed.get("quote", []):
            assert date.fromisoformat(quote["valid_until"]) > case.today, case.case_id
            if case.task_category != "QUOTE PREFIXES":
                assert quote["quote_prefix"] in world_prefixes, case.case_id
    assert len(set(stamps)) > 0.95 * len(stamps)  # drawn, not one fixed stamp
