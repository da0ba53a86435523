"""The learning loop's decisions that need no service: the triage rule, the harmful-entry
test, the synthesis gates, exploration's withholding and tool subsetting."""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime

import pytest

from agent_runner.learning.loop import TrackRecord, harmful, triage_rule
from agent_runner.learning.retrieval import Retrieval, RetrievedEntry, render_guidance
from agent_runner.learning.synthesis import apply_gates, case_values, gate
from agent_runner.learning.tool_subsets import ToolSubsets
from agent_runner.run.config import RetirementSettings, TriageSettings
from crmbench_contracts.cases import Case
from crmbench_contracts.playbooks import (
    Action,
    ArgumentRule,
    Cue,
    ExportedEntry,
    PlaybookContent,
    PlaybookCounters,
    PlaybookEntry,
)
from crmbench_contracts.traces import StepTrace
from crmbench_corpus.store import load_cases
from crmbench_llm.types import ToolSpec

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def content(
    cue: str = "the user asks to move a deal to a stage with other capitals",
    action: str = "Use the exact stage name the schema lists, with its capitalisation.",
    *,
    tools: tuple[str, ...] = ("modify_opportunity",),
    patterns: tuple[str, ...] = (),
    level: str = "domain",
    rules: tuple[ArgumentRule, ...] = (),
) -> PlaybookContent:
    return PlaybookContent.model_validate(
        {
            "audience": "student",
            "level": level,
            "cue": Cue(text=cue, patterns=list(patterns)),
            "action": Action(text=action, tools=list(tools), argument_rules=list(rules)),
            "expected_effect": "the stage change is accepted",
        }
    )


def entry(item: PlaybookContent) -> PlaybookEntry:
    return ExportedEntry.new(item, NOW).entry


# ------------------------------------------------------------------ triage


@pytest.mark.parametrize(
    ("episodes", "passes"), [(0, 0), (2, 2), (3, 3), (10, 9), (10, 7), (10, 5), (10, 2), (9, 2)]
)
def test_the_triage_rule_follows_its_thresholds(episodes: int, passes: int) -> None:
    settings = TriageSettings()
    decision = triage_rule(TrackRecord(episodes, passes), settings, "MODIFY QUOTE")
    rate = passes / episodes if episodes else 0.0
    if episodes < settings.min_episodes:
        expected = "coach"
    elif rate >= settings.auto_at:
        expected = "auto"
    elif rate >= settings.paired_at:
        expected = "paired"
    elif episodes >= settings.escalate_after and rate < settings.escalate_below:
        expected = "escalate"
    else:
        expected = "coach"
    assert decision.lane == expected
    assert decision.source == "rule" and "MODIFY QUOTE" in decision.reason
    assert decision.confidence == pytest.approx(
        episodes / (episodes + settings.min_episodes), abs=1e-4
    )


# ------------------------------------------------------------------ retirement


def counters_of(with_rewards: list[float], without_rewards: list[float]) -> PlaybookCounters:
    return PlaybookCounters(
        entry_id="pb-x",
        episodes_with=len(with_rewards),
        reward_sum_with=sum(with_rewards),
        reward_sq_sum_with=sum(r * r for r in with_rewards),
        episodes_without=len(without_rewards),
        reward_sum_without=sum(without_rewards),
        reward_sq_sum_without=sum(r * r for r in without_rewards),
    )


@pytest.mark.parametrize(
    ("with_rewards", "without_rewards"),
    [
        ([0.0] * 8 + [1.0] * 2, [1.0] * 8 + [0.0] * 2),  # credibly worse
        ([1.0] * 5 + [0.0] * 5, [1.0] * 6 + [0.0] * 4),  # slightly worse, not credibly
        ([1.0] * 9 + [0.0], [0.0] * 9 + [1.0]),  # better
        ([0.0] * 5, [1.0] * 5),  # too few episodes
    ],
)
def test_an_entry_is_harmful_when_its_welch_upper_bound_is_below_zero(
    with_rewards: list[float], without_rewards: list[float]
) -> None:
    settings = RetirementSettings()
    reason = harmful(counters_of(with_rewards, without_rewards), settings)
    enough = min(len(with_rewards), len(without_rewards)) >= settings.min_episodes
    diff = statistics.fmean(with_rewards) - statistics.fmean(without_rewards)
    se = math.sqrt(
        statistics.variance(with_rewards) / len(with_rewards)
        + statistics.variance(without_rewards) / len(without_rewards)
    )
    expected = enough and diff + settings.z * se < 0
    assert (reason is not None) == expected
    if reason is not None:
        assert f"{statistics.fmean(with_rewards):.3f}" in reason


# ------------------------------------------------------------------ gates


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {case.case_id: case for case in load_cases()}


def naive_steps(case: Case) -> list[StepTrace]:
    assert case.failure is not None
    return [
        StepTrace(
            session_id="s",
            step_id=number,
            tool_call_id=f"s#{number}",
            tool=action.tool,
            arguments=action.args,
            status=200,
            ok=True,
            latency_ms=1.0,
            started_at=NOW,
        )
        for number, action in enumerate(case.failure.trap.naive_actions, start=1)
    ]


TOOLS = [
    ToolSpec(
        name="modify_opportunity",
        description="",
        parameters={
            "type": "object",
            "properties": {"stage": {"type": "string", "enum": ["Proposal", "Closed-Won"]}},
        },
    ),
    ToolSpec(name="client_search", description=""),
    ToolSpec(name="create_contract", description=""),
]


def test_the_gates_refuse_a_restated_case_and_keep_its_lesson(cases: dict[str, Case]) -> None:
    case = cases["CRM-00001"]  # a contract for Quarry Software on the Harborview deal
    values = case_values([turn.content for turn in case.turns], naive_steps(case), TOOLS)
    assert "quarry software" in values and "harborview training bundle" in values
    restated = content(
        cue="contract for Quarry Software on another client's deal",
        action="Link the contract to Quarry Software's own opportunity.",
        tools=("create_contract",),
    )
    lesson = content(
        cue="the user asks for a contract for <client> on a deal named by <deal>",
        action="Check that the deal belongs to the same client before you create the contract.",
        tools=("opportunity_search", "create_contract"),
    )
    result = apply_gates([restated, lesson], values)
    assert result.accepted == [lesson]
    [refusal] = result.refused
    assert refusal.gate == "restates_case" and "quarry software" in refusal.reason


def test_schema_vocabulary_is_not_a_case_value() -> None:
    steps = [
        StepTrace(
            session_id="s",
            step_id=1,
            tool_call_id="s#1",
            tool="modify_opportunity",
            arguments={"stage": "Closed-Won", "amount": 12500},
            status=200,
            ok=True,
            latency_ms=1.0,
            started_at=NOW,
        )
    ]
    values = case_values(["Set it to Closed-Won at $12,500."], steps, TOOLS)
    assert "closed-won" not in values and "12500" in values
    assert gate(content(action="Move it to Closed-Won only from an open stage."), values) is None
    refusal = gate(content(action="Set the amount to 12,500 and the stage."), values)
    assert refusal is not None and refusal.gate == "restates_case"
    # A number inside a longer one is not a repeat.
    assert gate(content(action="Amounts stay below 1250000 and above zero."), values) is None


@pytest.mark.parametrize(
    ("candidate", "gate_name"),
    [
        (content(tools=()), "no_action"),
        (content(action="Be careful.", tools=("modify_opportunity",)), "no_action"),
        (content(cue="stages"), "no_cue"),
        (content(patterns=(".*",)), "no_cue"),
        (content(patterns=("Task category:|",)), "no_cue"),
    ],
)
def test_gates_refuse_what_cannot_be_followed_or_cued(
    candidate: PlaybookContent, gate_name: str
) -> None:
    refusal = gate(candidate, set())
    assert refusal is not None and refusal.gate == gate_name


def test_a_universal_entry_may_match_every_task_and_rules_count_as_an_action() -> None:
    universal = content(level="universal", patterns=(".*",))
    assert gate(universal, set()) is None
    # A universal entry may name no tool (it applies to any); below that level it may not.
    assert gate(content(level="universal", tools=()), set()) is None
    refused = gate(content(level="workflow", tools=()), set())
    assert refused is not None and refused.gate == "no_action"
    rule = ArgumentRule(tool="modify_opportunity", argument="probability", rule="whole number")
    assert gate(content(tools=(), rules=(rule,)), set()) is None


# ------------------------------------------------------------------ exploration


def test_withholding_keeps_the_top_entry_out_of_the_prompt() -> None:
    entries = [entry(content(cue=f"cue number {n} for stages", tools=("t",))) for n in range(4)]
    items = [RetrievedEntry(e, 0.9 - i / 10, "semantic") for i, e in enumerate(entries)]
    retrieval = Retrieval(items, 3, render_guidance(entries[:3]))
    held = retrieval.withholding_first()
    # Only the randomly withheld entry is a "without" episode of the harm test.
    assert (retrieval.withheld, held.withheld) == (None, entries[0])
    assert held.injected_entries == entries[1:3]
    assert held.not_injected_entries == [entries[0], entries[3]]
    assert held.text == render_guidance(entries[1:3])
    assert [r.injected for r in held.records("student")] == [True, True, False, False]
    empty = Retrieval([], 0, "")
    assert empty.withholding_first() is empty


# ------------------------------------------------------------------ tool subsets


def test_the_subset_is_the_category_the_entries_and_the_searches() -> None:
    subsets = ToolSubsets.load()
    tools = [ToolSpec(name=name, description="") for name in sorted(_all_tools(subsets))]
    rule = ArgumentRule(tool="upload_document", argument="filename", rule="no path")
    chosen = subsets.subset(
        tools,
        "CREATE NEW CONTRACT",
        [entry(content(tools=("modify_opportunity",), rules=(rule,)))],
    )
    assert chosen is not None
    expected = (
        set(subsets.categories["CREATE NEW CONTRACT"])
        | set(subsets.search_tools)
        | {"modify_opportunity", "upload_document"}
    )
    assert {tool.name for tool in chosen} == expected
    assert [tool.name for tool in chosen] == sorted(expected)  # the list's own order
    assert subsets.subset(tools, "NOT A CATEGORY", []) is None


def test_every_category_of_the_corpus_has_a_subset_of_real_tools(cases: dict[str, Case]) -> None:
    import json

    from crmbench_contracts.paths import REPO_ROOT
    from crmbench_contracts.tools import write_tools

    subsets = ToolSubsets.load()
    document = json.loads((REPO_ROOT / "docs" / "openapi.json").read_text())
    names = {
        op.get("operationId")
        for path in document["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and op.get("x-tool-kind")
    }
    assert write_tools(document) <= names
    assert _all_tools(subsets) <= names
    assert {case.task_category for case in cases.values()} <= set(subsets.categories)


def _all_tools(subsets: ToolSubsets) -> set[str]:
    return set(subsets.search_tools).union(*subsets.categories.values())


def test_adoption_leaves_out_entries_no_trace_can_show_followed() -> None:
    from agent_runner.reports.statistics import adoption_rate, unobservable_retrievals
    from tests.agent_runner.trace_factory import make_session

    observable = entry(content())
    universal = entry(content(level="universal", tools=()))
    retrieval = Retrieval(
        [RetrievedEntry(universal, None, "pattern"), RetrievedEntry(observable, 0.8, "semantic")],
        2,
        render_guidance([universal, observable]),
    )
    records = retrieval.records("student")
    assert [r.observable for r in records] == [False, True]
    followed = make_session("CASE-1")
    followed.crm_context.learning_mode = "frozen"
    followed.crm_context.playbooks_retrieved = records
    followed.crm_context.playbooks_adopted = [observable.entry_id]
    ignored = followed.model_copy(deep=True, update={"session_id": "run-1/CASE-2/0"})
    ignored.crm_context.playbooks_adopted = []
    rate = adoption_rate([followed, ignored])
    assert rate is not None and (rate.passed, rate.total) == (1, 2)
    assert unobservable_retrievals([followed, ignored]) == 2
