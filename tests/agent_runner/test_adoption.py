"""Adoption in frozen runs: which injected playbook entries a trajectory followed (the
rule itself on hand-made steps), and, against real Postgres, the real CRM API and the real
verifier, what reaches the session trace, the memory's counters and events (once per
episode, also when the hooks run again) and the adoption rate of `crmbench results`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent_runner.agents.base import AgentResult
from agent_runner.learning.adoption import adoption, outcome_increments, rule_holds
from agent_runner.learning.memory import PlaybookStore
from agent_runner.learning.retrieval import PlaybookRetriever, RetrievalHooks
from agent_runner.reports.rendering import render_report
from agent_runner.reports.statistics import build_report
from crmbench_contracts.playbooks import (
    Action,
    AdoptionEvent,
    ArgumentRule,
    Cue,
    PlaybookCandidate,
    PlaybookEntry,
    entry_id_for,
)
from crmbench_contracts.traces import StepTrace
from crmbench_llm import ScriptedProvider
from tests.agent_runner.conftest import RunServices
from tests.agent_runner.test_retrieval import (
    EMBEDDER,
    FROZEN,
    STAGE_CASE,
    add,
    context,
    memory,
    play,
    student_config,
)
from tests.agent_runner.test_runner import read_trace_file, scripted_agent, turn

__all__ = ["memory"]  # the fixture, used by name

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def candidate(
    tools: list[str],
    rules: list[ArgumentRule] | None = None,
    *,
    cue: str = "unrelated words entirely",
    patterns: list[str] | None = None,
    text: str = "Do it.",
) -> PlaybookCandidate:
    return PlaybookCandidate(
        audience="student",
        level="domain",
        cue=Cue(text=cue, patterns=patterns or []),
        action=Action(text=text, tools=tools, argument_rules=rules or []),
        expected_effect="the verifier's checks pass",
    )


def entry(tools: list[str], rules: list[ArgumentRule] | None = None) -> PlaybookEntry:
    content = candidate(tools, rules)
    digest = content.digest()
    return PlaybookEntry.model_validate(
        {
            **content.model_dump(exclude={"provenance"}),
            "entry_id": entry_id_for(digest),
            "version": 1,
            "content_hash": digest,
            "created_at": NOW,
            "updated_at": NOW,
        }
    )


def step(step_id: int, tool: str, actor: Any = "student", **arguments: Any) -> StepTrace:
    return StepTrace(
        session_id="s",
        step_id=step_id,
        tool_call_id=f"c{step_id}",
        tool=tool,
        arguments=arguments,
        status=200,
        ok=True,
        latency_ms=1.0,
        actor=actor,
        started_at=NOW,
    )


STAGE_RULE = ArgumentRule(
    tool="modify_opportunity",
    argument="stage",
    rule="the stage by its exact name",
    pattern="Proposal|Negotiation",
)
FRACTION_RULE = ArgumentRule(
    tool="modify_opportunity",
    argument="probability",
    rule="probability as a fraction",
    pattern=r"0\.\d+",
)
WORDS_RULE = ArgumentRule(tool="modify_opportunity", argument="notes", rule="be polite")


def test_an_entry_is_followed_by_the_first_call_of_its_tool_that_meets_its_rules() -> None:
    steps = [
        step(1, "opportunity_search", criteria={"name": "Zephyr"}),
        step(2, "modify_opportunity", opportunity_id="o1", stage="proposal"),  # case differs
        step(3, "modify_opportunity", opportunity_id="o1", stage="Proposal", probability=60),
    ]
    stage = entry(["modify_opportunity"], [STAGE_RULE, WORDS_RULE])
    assert adoption(stage, steps) == AdoptionEvent(
        entry_id=stage.entry_id,
        step=3,
        evidence="called modify_opportunity; stage='Proposal' matches 'Proposal|Negotiation'",
    )
    # The tool alone suffices when no rule has a pattern; a tool never called does not.
    assert adoption(entry(["opportunity_search"], [WORDS_RULE]), steps) is not None
    assert adoption(entry(["delete_opportunity"]), steps) is None
    # Non-strings are matched as canonical JSON: 60 is "60", not a fraction.
    assert adoption(entry(["modify_opportunity"], [FRACTION_RULE]), steps) is None
    assert adoption(entry([], [FRACTION_RULE]), [step(1, "modify_opportunity", probability=0.6)])
    # A rule's argument must be given; an entry naming no tool shows in no trace; a
    # teacher's call does not show a student entry followed.
    assert adoption(entry(["modify_opportunity"], [STAGE_RULE]), steps[:1]) is None
    assert adoption(entry([]), steps) is None
    teacher_step = step(1, "modify_opportunity", actor="teacher", stage="Proposal")
    assert adoption(entry(["modify_opportunity"]), [teacher_step]) is None
    assert rule_holds(STAGE_RULE, {"stage": "Negotiation"})
    with pytest.raises(ValueError, match="no pattern"):
        rule_holds(WORDS_RULE, {"notes": "thanks"})


def test_outcome_increments_count_every_injected_entry_and_follow_only_the_adopted() -> None:
    first, second = entry(["a"]), entry(["b"])
    bumps = outcome_increments([first, second], [second.entry_id], reward=0.5, tokens=120)
    with_episode = {
        "episodes_with": 1,
        "reward_sum_with": 0.5,
        "reward_sq_sum_with": 0.25,
        "tokens_sum_with": 120,
    }
    assert bumps == {
        first.entry_id: with_episode,
        second.entry_id: {**with_episode, "followed": 1},
    }


async def test_a_frozen_run_records_the_followed_entries_and_counts_them_once(
    run_services: RunServices, memory: PlaybookStore, tmp_path: Path
) -> None:
    # Three entries the stage case's task matches by pattern only (cues of their own words,
    # so no two merge; injected, k = 3), and one it matches only by similarity (ranked
    # after them: retrieved, not injected).
    followed = await add(
        memory,
        candidate(["modify_opportunity"], [STAGE_RULE], cue="first", patterns=[r"\bZephyr\b"]),
    )
    other_tool = await add(
        memory, candidate(["delete_opportunity"], cue="second", patterns=[r"\bstage\b"])
    )
    broken_rule = await add(
        memory,
        candidate(["modify_opportunity"], [FRACTION_RULE], cue="third", patterns=["probability"]),
    )
    not_injected = await add(
        memory,
        candidate(
            ["modify_opportunity"], cue="update the opportunity stage Proposal and its probability"
        ),
    )
    # The student does the case's work (so its reward is not 0) in one call.
    [opportunity] = run_services.cases[STAGE_CASE].seed["opportunity"]
    call = {"opportunity_id": opportunity["opportunity_id"], "stage": "Proposal", "probability": 60}
    reply = "Updated Zephyr Annual License: stage Proposal, probability 60."
    provider = ScriptedProvider(model="scripted").then(
        turn(("modify_opportunity", call), tokens=100), turn(text=reply, tokens=40)
    )
    run_id, [(session, steps)] = await play(
        run_services,
        student_config([STAGE_CASE], FROZEN),
        scripted_agent(provider),
        tmp_path,
    )
    ctx = session.crm_context
    assert [(r.entry_id, r.injected) for r in ctx.playbooks_retrieved] == [
        (followed.entry_id, True),
        (other_tool.entry_id, True),
        (broken_rule.entry_id, True),
        (not_injected.entry_id, False),
    ]
    assert ctx.playbooks_adopted == [followed.entry_id]
    [jsonl_session], _ = read_trace_file(tmp_path / "sessions.jsonl")
    assert jsonl_session.crm_context.playbooks_adopted == [followed.entry_id]

    # Every injected entry had this episode "with" it; only the followed one is followed.
    assert session.reward is not None and session.total_tokens == 150 + 60
    score = session.score
    assert score > 0.5

    async def counters() -> dict[str, tuple[Any, ...]]:
        return {
            entry_id: (
                c.retrieved,
                c.injected,
                c.followed,
                c.episodes_with,
                c.reward_sum_with,
                c.reward_sq_sum_with,
                c.tokens_sum_with,
            )
            for entry_id, c in (await memory.counters_of(list(ids))).items()
        }

    ids = [e.entry_id for e in (followed, other_tool, broken_rule, not_injected)]
    with_it = (1, score, score * score, 210)
    expected = {
        followed.entry_id: (1, 1, 1, *with_it),
        other_tool.entry_id: (1, 1, 0, *with_it),
        broken_rule.entry_id: (1, 1, 0, *with_it),
        not_injected.entry_id: (1, 0, 0, 0, 0.0, 0.0, 0),
    }
    assert await counters() == expected
    [event] = [e for e in await memory.events(run_id=run_id) if e.kind == "adoption"]
    assert event.session_id == session.session_id
    assert event.payload == AdoptionEvent(
        entry_id=followed.entry_id,
        step=1,
        evidence="called modify_opportunity; stage='Proposal' matches 'Proposal|Negotiation'",
    )

    # The hooks run again on the same session (a resumed run, a claim taken over): the
    # same adoption is judged, nothing is counted or written twice.
    retriever = PlaybookRetriever(memory, EMBEDDER, k=FROZEN.k, threshold=FROZEN.threshold)
    hooks = RetrievalHooks(retriever, run_id=run_id)
    again = context(session.session_id, run_services.cases[STAGE_CASE])
    await hooks.before_act(again)
    again.steps = list(steps)
    result = AgentResult(final_reply=session.final_answer, outcome=session.outcome)
    review = await hooks.after_act(again, result)
    assert review.adopted == [followed.entry_id]
    await hooks.after_reward(again, result, session.reward)
    assert await counters() == expected
    assert len(await memory.events(run_id=run_id)) == 2  # one retrieval, one adoption

    # `crmbench results`: 1 of the 4 retrieved entries was injected and followed; the
    # Wilson interval of 1/4 at 95% is [4.56%, 69.94%].
    report = build_report([session])
    assert report.adoption is not None
    assert (report.adoption.passed, report.adoption.total) == (1, 4)
    assert (report.adoption.low, report.adoption.high) == pytest.approx(
        (0.045587, 0.699358), abs=1e-6
    )
    assert (
        "adoption rate 25.0% (1/4 retrieved playbook entries injected and followed; "
        "95% CI [4.6%, 69.9%])"
    ) in render_report(report)
