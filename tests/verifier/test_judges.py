"""The judge protocol: judges run concurrently, the arbiter decides only on disagreement
(scores, uncertainty, outcomes, facts); the prompt lists every branch's facts."""

from __future__ import annotations

import asyncio
import json

import pytest

from crmbench_contracts.cases import Branch, Case, CommunicationFact, Outcome
from crmbench_contracts.rewards import JudgeScore, fact_id
from tests.verifier.factories import (
    EMPTY_LOG,
    assertion,
    client,
    judged,
    make_case,
    mentions_value,
    state_of,
)
from verifier.judges import (
    FINAL_REPLY_CLOSE,
    FINAL_REPLY_OPEN,
    Judge,
    JudgeFailed,
    JudgeOutcome,
    JudgeRequest,
    ScriptedJudge,
    case_facts,
    disagreement,
    judge_prompt,
    run_judges,
)
from verifier.scoring import score_case

CASE = make_case(
    state=[assertion("row_exists", "client", {"name": "Acme Corp"})],
    communicate=[judged("explains why the deal cannot be reopened")],
    turns=["Reopen the Acme pilot deal please."],
    outcomes=[Outcome.REFUSED],
)
REQUEST = JudgeRequest(case=CASE, final_reply="I cannot reopen a closed deal.")
LIMITS = {"max_spread": 0.3, "max_uncertainty": 0.5}


async def test_the_arbiter_is_not_called_when_judges_agree() -> None:
    arbiter = ScriptedJudge("arbiter", 0.0)
    outcome = await run_judges(
        [ScriptedJudge("a", 0.8, 0.1), ScriptedJudge("b", 1.0, 0.2)], arbiter, REQUEST, **LIMITS
    )
    assert arbiter.requests == []
    assert outcome.arbiter is None and not outcome.disagreed
    assert outcome.value == pytest.approx(0.9)


async def test_a_spread_of_exactly_the_threshold_is_agreement() -> None:
    arbiter = ScriptedJudge("arbiter", 0.0)
    outcome = await run_judges(
        [ScriptedJudge("a", 0.5), ScriptedJudge("b", 0.75)],
        arbiter,
        REQUEST,
        max_spread=0.25,
        max_uncertainty=0.5,
    )
    assert outcome.arbiter is None and arbiter.requests == []


async def test_the_arbiter_decides_when_scores_spread_beyond_the_threshold() -> None:
    arbiter = ScriptedJudge("arbiter", 0.2, rationale="the reply reopened the deal")
    outcome = await run_judges(
        [ScriptedJudge("a", 0.9), ScriptedJudge("b", 0.4)], arbiter, REQUEST, **LIMITS
    )
    assert len(arbiter.requests) == 1 and arbiter.requests[0] is REQUEST
    assert outcome.disagreed and outcome.arbiter is not None
    assert outcome.arbiter.judge == "arbiter"
    assert outcome.value == 0.2


async def test_the_arbiter_is_called_when_a_judge_is_unsure() -> None:
    arbiter = ScriptedJudge("arbiter", 0.6)
    outcome = await run_judges(
        [ScriptedJudge("a", 0.9, 0.1), ScriptedJudge("b", 0.9, 0.8)], arbiter, REQUEST, **LIMITS
    )
    assert len(arbiter.requests) == 1 and outcome.value == 0.6


async def test_without_an_arbiter_a_disagreement_is_recorded_and_the_mean_decides() -> None:
    outcome = await run_judges(
        [ScriptedJudge("a", 1.0), ScriptedJudge("b", 0.0)], None, REQUEST, **LIMITS
    )
    assert outcome.disagreed and outcome.arbiter is None and outcome.value == 0.5


async def test_no_judges_give_no_verdict() -> None:
    outcome = await run_judges([], ScriptedJudge("arbiter"), REQUEST, **LIMITS)
    assert outcome == JudgeOutcome() and outcome.value is None


async def test_judges_run_concurrently() -> None:
    barrier = asyncio.Barrier(2)

    class WaitingJudge(ScriptedJudge):
        async def judge(self, request: JudgeRequest) -> JudgeScore:
            await barrier.wait()  # both must be waiting at once, or this never returns
            return await super().judge(request)

    judges: list[Judge] = [WaitingJudge("a"), WaitingJudge("b")]
    outcome = await asyncio.wait_for(run_judges(judges, None, REQUEST, **LIMITS), timeout=5)
    assert [score.judge for score in outcome.judges] == ["a", "b"]


async def test_a_failing_judge_raises_judge_failed() -> None:
    class BrokenJudge(ScriptedJudge):
        async def judge(self, request: JudgeRequest) -> JudgeScore:
            raise TimeoutError("provider timed out")

    with pytest.raises(JudgeFailed, match="judge 'broken' failed: TimeoutError"):
        await run_judges([ScriptedJudge("a"), BrokenJudge("broken")], None, REQUEST, **LIMITS)


async def test_scripted_judge_scores_per_case() -> None:
    judge = ScriptedJudge("a", 1.0, 0.0, by_case={CASE.case_id: (0.3, 0.7)})
    score = await judge.judge(REQUEST)
    assert (score.score, score.uncertainty) == (0.3, 0.7)
    other = REQUEST.model_copy(update={"case": make_case(case_id="other")})
    assert (await judge.judge(other)).score == 1.0
    assert isinstance(judge, Judge)


async def test_the_arbiters_score_decides_the_weighted_score() -> None:
    outcome = await run_judges(
        [ScriptedJudge("a", 1.0), ScriptedJudge("b", 0.2)],
        ScriptedJudge("arb", 0.5),
        REQUEST,
        **LIMITS,
    )
    record = score_case(
        CASE,
        state_of(client=[client("c-acme", "Acme Corp")]),
        EMPTY_LOG,
        REQUEST.final_reply,
        judges=outcome,
        judge_weight=0.2,
    )
    assert record.structured_score == 1.0
    assert record.score == pytest.approx(0.8 + 0.2 * 0.5)
    assert record.passed  # 0.9
    assert record.arbiter is not None and record.arbiter.judge == "arb"
    assert [j.score for j in record.judges] == [1.0, 0.2]


def test_the_prompt_carries_the_task_the_facts_and_the_reply() -> None:
    prompt = judge_prompt(REQUEST.model_copy(update={"state_summary": {"changes": []}}))
    assert "Reopen the Acme pilot deal please." in prompt
    assert "- primary/0: explains why the deal cannot be reopened" in prompt
    assert prompt.endswith(
        f"{FINAL_REPLY_OPEN}\nI cannot reopen a closed deal.\n{FINAL_REPLY_CLOSE}"
    )


# ---------------------------------------------------------------------------- outcome and facts

REASON = CommunicationFact(
    kind="reason",
    fact="explains that probability is a whole percentage",
    rule="PROBABILITY_DECIMAL",
    any_of=["whole number"],
    subject_any=["probability"],
)
ASK = Branch(
    name="ask",
    outcomes=[Outcome.NEEDS_CLARIFICATION],
    state=[],
    allowed_changes=[],
    communicate=[
        CommunicationFact(kind="mentions", fact="asks whether to round", any_of=["round"]),
        mentions_value("opportunity", {"name": "Acme pilot"}, "probability"),
    ],
)


def branched_case() -> Case:
    """A case refused on its primary branch, with an alternative that asks first."""
    return make_case(
        case_id="vfy-branches",
        communicate=[
            REASON,
            CommunicationFact(
                kind="mentions", fact="keeps the stage", any_of=["Proposal"], affirmed=True
            ),
        ],
        turns=["Set the Acme pilot probability to 45.5%."],
        outcomes=[Outcome.REFUSED],
        alternatives=[ASK],
    )


def test_the_prompt_lists_every_branchs_facts_with_ids_and_hides_the_accepted_outcomes() -> None:
    case = branched_case()
    prompt = judge_prompt(JudgeRequest(case=case, final_reply="Rounded it to 46%."))
    ids = [key for key, _ in case_facts(case)]
    assert ids == [fact_id("primary", 0), fact_id("primary", 1), fact_id("ask", 0), "ask/1"]
    for key, fact in case_facts(case):
        assert f"- {key}: {fact.fact}\n" in prompt
    assert "  rule: PROBABILITY_DECIMAL (" in prompt and "unrelated rules" in prompt
    assert f"  must also name one of: {json.dumps(['probability'])}" in prompt
    assert "  affirmed: it must be stated as done or true" in prompt
    assert 'opportunity.probability of the row where {"name": "Acme pilot"}' in prompt
    # The four outcomes are named once, as the answer's choices; nothing says which the
    # case accepts (neither the branches' outcomes nor the trap's right behaviour).
    for outcome in Outcome:
        assert prompt.count(f'"{outcome.value}"') == 1
    assert "accept" not in prompt.replace("acceptable endings", "")


async def test_judges_reading_different_outcomes_call_the_arbiter() -> None:
    arbiter = ScriptedJudge("arbiter", outcome=Outcome.REFUSED)
    outcome = await run_judges(
        [
            ScriptedJudge("a", outcome=Outcome.COMPLETED),
            ScriptedJudge("b", outcome=Outcome.REFUSED),
        ],
        arbiter,
        REQUEST,
        **LIMITS,
    )
    assert outcome.disagreed and len(arbiter.requests) == 1
    assert outcome.outcome is Outcome.REFUSED  # the arbiter's


async def test_a_judge_that_reads_no_outcome_does_not_disagree() -> None:
    arbiter = ScriptedJudge("arbiter", outcome=Outcome.REFUSED)
    outcome = await run_judges(
        [ScriptedJudge("a", outcome=Outcome.COMPLETED), ScriptedJudge("b")],
        arbiter,
        REQUEST,
        **LIMITS,
    )
    assert not outcome.disagreed and arbiter.requests == []
    assert outcome.outcome is Outcome.COMPLETED  # the only outcome cast is a majority


async def test_judges_split_on_a_fact_call_the_arbiter_and_its_verdict_decides() -> None:
    arbiter = ScriptedJudge("arbiter", facts={"primary/0": False})
    outcome = await run_judges(
        [
            ScriptedJudge("a", facts={"primary/0": True, "primary/1": True}),
            ScriptedJudge("b", facts={"primary/0": False, "primary/1": True}),
        ],
        arbiter,
        REQUEST,
        **LIMITS,
    )
    assert outcome.disagreed and len(arbiter.requests) == 1
    assert outcome.fact("primary/0") is False  # the arbiter's verdict
    assert outcome.fact("primary/1") is True  # the arbiter gave none: the judges' majority
    assert outcome.fact("primary/2") is None  # nobody said


async def test_a_fact_only_one_judge_decides_is_not_a_split() -> None:
    arbiter = ScriptedJudge("arbiter")
    outcome = await run_judges(
        [ScriptedJudge("a", facts={"primary/0": True}), ScriptedJudge("b", facts={})],
        arbiter,
        REQUEST,
        **LIMITS,
    )
    assert not outcome.disagreed and outcome.fact("primary/0") is True


def test_disagreement_names_every_reason() -> None:
    scores = [
        JudgeScore(
            judge="a",
            score=1.0,
            uncertainty=0.9,
            rationale="",
            outcome=Outcome.COMPLETED,
            facts={"primary/0": True},
        ),
        JudgeScore(
            judge="b",
            score=0.2,
            uncertainty=0.0,
            rationale="",
            outcome=Outcome.NEEDS_APPROVAL,
            facts={"primary/0": False, "ask/0": True},
        ),
    ]
    assert disagreement(scores, max_spread=0.3, max_uncertainty=0.5) == [
        "scores spread 0.80 > 0.3",
        "uncertainty above 0.5: a",
        "outcomes differ: completed, needs_approval",
        "facts split: primary/0",
    ]
    assert disagreement(scores[:1], max_spread=0.3, max_uncertainty=0.95) == []


def test_without_an_arbiter_the_majority_reads_outcome_and_facts_and_a_tie_reads_none() -> None:
    def score(name: str, outcome: Outcome | None, conveyed: bool | None) -> JudgeScore:
        facts = {} if conveyed is None else {"primary/0": conveyed}
        return JudgeScore(
            judge=name, score=1.0, uncertainty=0.0, rationale="", outcome=outcome, facts=facts
        )

    three = JudgeOutcome(
        judges=[
            score("a", Outcome.REFUSED, True),
            score("b", Outcome.REFUSED, False),
            score("c", Outcome.COMPLETED, True),
        ]
    )
    assert (three.outcome, three.fact("primary/0")) == (Outcome.REFUSED, True)
    tie = JudgeOutcome(
        judges=[score("a", Outcome.REFUSED, True), score("b", Outcome.COMPLETED, False)]
    )
    assert (tie.outcome, tie.fact("primary/0")) == (None, None)
    scoring_only = JudgeOutcome(judges=[score("a", None, None)])
    assert (scoring_only.outcome, scoring_only.fact("primary/0")) == (None, None)


async def test_scripted_judge_gives_canned_outcome_and_facts_per_case() -> None:
    judge = ScriptedJudge(
        "a",
        outcome=Outcome.COMPLETED,
        facts={"primary/0": True},
        outcome_by_case={CASE.case_id: Outcome.REFUSED},
        facts_by_case={CASE.case_id: {"primary/0": False}},
    )
    score = await judge.judge(REQUEST)
    assert (score.outcome, score.facts) == (Outcome.REFUSED, {"primary/0": False})
    other = await judge.judge(REQUEST.model_copy(update={"case": make_case(case_id="other")}))
    assert (other.outcome, other.facts) == (Outcome.COMPLETED, {"primary/0": True})
    plain = await ScriptedJudge("b").judge(REQUEST)
    assert (plain.outcome, plain.facts) == (None, {})
