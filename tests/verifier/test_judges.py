"""The judge protocol: judges run concurrently, the arbiter decides only on disagreement."""

from __future__ import annotations

import asyncio

import pytest

from crmbench_contracts.cases import Outcome
from crmbench_contracts.rewards import JudgeScore
from tests.verifier.factories import EMPTY_LOG, assertion, client, judged, make_case, state_of
from verifier.judges import (
    Judge,
    JudgeFailed,
    JudgeOutcome,
    JudgeRequest,
    ScriptedJudge,
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
    assert "explains why the deal cannot be reopened" in prompt
    assert prompt.endswith("I cannot reopen a closed deal.")
