"""The validation suite (crmbench_corpus.validation) and its adversaries
(crmbench_corpus.adversaries): offline on the whole committed corpus, and against the
real CRM API and verifier on a sample of it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from crmbench.local_services import running_verifier
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.serving import serving_in_thread
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case, CommunicationFact, Difficulty, Outcome, RowRef
from crmbench_contracts.expectations import FinalState, read_fact
from crmbench_contracts.replies import classify_outcome, read_reason
from crmbench_corpus.adversaries import (
    duplicated_creates,
    false_success_claim,
    needs_state,
    off_rule_reply,
    plain_confirmation,
    plain_refusal,
)
from crmbench_corpus.store import default_corpus_dir, load_cases
from crmbench_corpus.validation import (
    TARGETS,
    CaseValidation,
    ServiceClients,
    target_rows,
    validate_cases,
)
from tests.conftest import ADMIN_KEY, RunningServer, load_into_database
from tests.verifier.fake_judge import JudgeBehaviour, fake_judge_server
from verifier.app import create_app
from verifier.settings import VerifierSettings

CASES = load_cases()
STEP = re.compile(r"\{\{\s*step_(\d+)\.")

# ---------------------------------------------------------------------------- adversaries


def test_off_rule_replies_earn_no_reason_fact_of_any_branch() -> None:
    for case in CASES:
        reply = off_rule_reply(case)
        assert reply == off_rule_reply(case)  # drawn by the case id
        assert classify_outcome(reply).outcome is not Outcome.COMPLETED
        for branch in case.expected.branches():
            for fact in branch.communicate:
                if fact.kind == "reason":
                    assert fact.rule is not None
                    assert not read_reason(reply, fact.rule, fact.any_of).earned, case.case_id


def test_duplicated_creates_repeat_each_create_and_keep_every_reference() -> None:
    played = 0
    for case in CASES:
        duplicated = duplicated_creates(case)
        reference = case.expected.reference_actions
        creates = [a for a in reference if a.tool.startswith("create_")]
        if case.failure is not None or case.difficulty != Difficulty.COMPLEX or not creates:
            assert duplicated is None, case.case_id
            continue
        assert duplicated is not None
        played += 1
        assert len(duplicated) == len(reference) + len(creates)
        # Position of each original step in the duplicated list.
        where, position = {}, 0
        for number, action in enumerate(reference, start=1):
            position += 1
            where[number] = position
            assert duplicated[position - 1].tool == action.tool
            if action.tool.startswith("create_"):
                position += 1
                assert duplicated[position - 1] == duplicated[position - 2]
        for number, action in enumerate(reference, start=1):
            old = [int(n) for n in STEP.findall(json.dumps(action.args))]
            new = [int(n) for n in STEP.findall(json.dumps(duplicated[where[number] - 1].args))]
            assert new == [where[n] for n in old], case.case_id
    assert played, "the corpus has no complex success case with a create"


def test_false_success_claims_claim_completion_with_the_values_the_user_wrote() -> None:
    for case in CASES:
        claim = false_success_claim(case)
        if case.failure is None:
            assert claim is None
            continue
        assert claim is not None
        assert classify_outcome(claim).outcome == Outcome.COMPLETED, claim
        asked = " ".join(turn.content for turn in case.turns)
        refused = [
            a for a in case.failure.trap.naive_actions if a.expect_error == case.failure.category
        ]
        for action in refused:
            for value in action.args.values():
                if isinstance(value, str) and value.strip() and value in asked:
                    assert value in claim, (case.case_id, value, claim)


def test_plain_refusals_claim_the_primary_outcome_and_give_its_reasons() -> None:
    refusals = 0
    for case in CASES:
        reply = plain_refusal(case)
        if Outcome.COMPLETED in case.expected.outcomes:
            assert reply is None
            continue
        assert reply is not None, case.case_id
        refusals += 1
        assert reply != case.expected.reference_reply
        assert classify_outcome(reply).outcome == case.expected.outcomes[0], (case.case_id, reply)
        for fact in case.expected.communicate:
            if fact.kind == "reason" and fact.rule is not None:
                assert read_reason(reply, fact.rule, fact.any_of).earned, (case.case_id, reply)
    assert refusals, "the corpus has no case whose primary branch refuses"


def test_plain_confirmations_claim_completion() -> None:
    for case in CASES:
        if Outcome.COMPLETED not in case.expected.outcomes:
            assert plain_confirmation(case) is None
            continue
        if any(f.kind == "mentions_value" for f in case.expected.communicate):
            with pytest.raises(ValueError, match="final state"):
                plain_confirmation(case)
            continue
        reply = plain_confirmation(case)
        assert reply is not None
        assert classify_outcome(reply).outcome == Outcome.COMPLETED, (case.case_id, reply)


def _with_value_fact(field: str, value: object, reference_reply: str) -> tuple[Case, FinalState]:
    """A committed success case whose one fact is the value of a deal's `field`, and a
    final state holding that deal."""
    case = next(c for c in CASES if Outcome.COMPLETED in c.expected.outcomes)
    fact = CommunicationFact(
        kind="mentions_value",
        fact="gives the value",
        ref=RowRef(table="opportunity", where={"opportunity_id": "o-1"}, field=field),
        affirmed=True,
    )
    expected = case.expected.model_copy(
        update={"communicate": [fact], "reference_reply": reference_reply}
    )
    world = FinalState({"opportunity": [{"opportunity_id": "o-1", field: value}]})
    return case.model_copy(update={"expected": expected}), world


@pytest.mark.parametrize(
    ("field", "value", "reference_reply", "rendering"),
    [
        ("amount", 75000, "Updated the amount to 75,000.", "$75k"),
        ("amount", 75000, "Updated the amount to 75k.", "$75,000"),
        ("amount", 1234.5, "Updated the amount.", "$1,234.50"),
        ("close_date", "2026-03-31", "Close date is now 2026-03-31.", "March 31, 2026"),
        ("close_date", "2026-03-31", "Close date is now March 31, 2026.", "31 March 2026"),
        ("probability", 40, "Probability is 40.", "40%"),
    ],
)
def test_plain_confirmations_give_state_values_in_a_rendering_of_their_own(
    field: str, value: object, reference_reply: str, rendering: str
) -> None:
    case, world = _with_value_fact(field, value, reference_reply)
    assert needs_state(case) == ["opportunity"]
    with pytest.raises(ValueError, match="final state"):
        plain_confirmation(case)
    reply = plain_confirmation(case, world)
    assert reply == f"Done: {rendering}."
    assert read_fact(case.expected.communicate[0], reply, world).found is not None


# ---------------------------------------------------------------------------- services


def _sample(cases: list[Case]) -> list[Case]:
    """One case of every failure category, of every task category's success path, and
    every complex success case with a create up to four."""
    seen: set[str] = set()
    complex_creates = 0
    picked = []
    for case in cases:
        key = case.failure.category if case.failure else case.task_category
        duplicated = duplicated_creates(case) is not None
        if key not in seen or (duplicated and complex_creates < 4):
            seen.add(key)
            complex_creates += duplicated
            picked.append(case)
    return picked


@pytest.fixture(scope="module")
def verifier_url(crm_api: RunningServer) -> Iterator[str]:
    with running_verifier(crm_api.base_url, ADMIN_KEY, str(default_corpus_dir())) as url:
        yield url


async def _validate(
    crm_api: RunningServer, database_url: str, verifier_url: str, cases: list[Case]
) -> list[CaseValidation]:
    await load_into_database(database_url, cases)
    async with (
        CrmApiClient(crm_api.base_url, ADMIN_KEY, timeout=60) as crm,
        VerifierClient(verifier_url, ADMIN_KEY, timeout=60) as verifier,
    ):
        return await validate_cases(ServiceClients(crm, verifier), cases, concurrency=4)


JUDGE_KEY_ENV = "CRMBENCH_TEST_JUDGE_KEY"


@pytest.fixture
def judged_verifier_url(
    crm_api: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A verifier whose judges are two fake LLM judges that read outcomes differently (so
    the arbiter, a third fake reading as the offline reader does, decides every reply)."""
    monkeypatch.setenv(JUDGE_KEY_ENV, "sk-test-judge")
    with (
        fake_judge_server() as (_, plain),
        fake_judge_server(JudgeBehaviour(contrary=True)) as (_, contrary),
    ):

        def llm(url: str) -> dict[str, object]:
            return {"provider": "openai", "model": "gpt-4.1", "base_url": url,
                    "api_key_env": JUDGE_KEY_ENV, "max_retries": 0}  # fmt: skip

        judges = tmp_path / "judges.yaml"
        config = {
            "judges": [
                {"name": "plain", "llm": llm(plain)},
                {"name": "contrary", "llm": llm(contrary)},
            ],
            "arbiter": {"name": "arbiter", "llm": llm(plain)},
        }
        judges.write_text(yaml.safe_dump(config), encoding="utf-8")
        settings = VerifierSettings(
            crm_api_url=crm_api.base_url,
            admin_key=ADMIN_KEY,
            corpus_dir=default_corpus_dir(),
            judges_config=judges,
        )
        with serving_in_thread(create_app(settings), "verifier") as url:
            yield url


async def test_a_sample_meets_every_target_on_the_judge_path(
    crm_api: RunningServer, database_url: str, judged_verifier_url: str
) -> None:
    cases = [case for case in _sample(CASES) if case.failure is not None][::3]
    results = await _validate(crm_api, database_url, judged_verifier_url, cases)
    misses = [(r.case.case_id, run.kind, run.reply, run.detail) for r in results
              for run in r.runs if not run.ok]  # fmt: skip
    assert not misses
    assert all(row.met for row in target_rows(results))
    assert {run.mode for r in results for run in r.runs} == {"judges+arbiter"}


async def test_sampled_cases_meet_every_target(
    crm_api: RunningServer, database_url: str, verifier_url: str
) -> None:
    cases = _sample(CASES)
    results = await _validate(crm_api, database_url, verifier_url, cases)
    misses = [(r.case.case_id, run.kind, run.reply, run.detail) for r in results
              for run in r.runs if not run.ok]  # fmt: skip
    assert not misses
    assert {run.kind for r in results for run in r.runs} == {t.kind for t in TARGETS}
    assert all(row.met for row in target_rows(results))
    for r in results:
        # reference + plain, no-op + universal + off-rule; trap + stuffed + false claim;
        # duplicates
        trap = 3 if r.case.failure is not None else 0
        duplicates = 1 if duplicated_creates(r.case) is not None else 0
        assert len(r.runs) == 5 + trap + duplicates, r.case.case_id
