"""The learning loop's real-provider path end to end: the student on the OpenAI API and the
teacher on the Anthropic API (the strict fakes of `fake_llm_servers`, reached through the
official SDKs), with the hooks `run_learning_hooks` builds from the run config, on real
services (Postgres, the CRM API, the verifier).

- A run whose episodes are coached, paired and escalated (the lanes forced by the task
  categories' track records): the guidance reaches the student as system messages after
  the tool results, the paired episode is retried, the escalated one is played by the
  Anthropic model with tools, the lessons are stored with their provenance, and the
  traces carry the lanes, transitions, guidance events and the teacher's tokens.
- A teacher that answers junk to plan review and synthesis: the episode still completes
  and is scored, the errors are recorded as `teacher_call` events, nothing is stored.

The fakes answer through responders that read each request as a model would: the student
from its conversation, the teacher from its prompt (which template, which episode).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from agent_runner.agents.factory import build_agent
from agent_runner.agents.llm_agent import RETRY_REQUEST, SUPERVISOR_HOLD, supervisor_message
from agent_runner.learning.factory import run_learning_hooks
from agent_runner.learning.llm_teacher import (
    DEFAULT_PROMPTS_DIR,
    PROMPT_FILES,
    first_json_object,
)
from agent_runner.learning.loop import LearningHooks, TrackRecord, triage_rule
from agent_runner.learning.synthesis import case_values
from agent_runner.protocol import parse_tool_result
from agent_runner.run.config import RunConfig, TriageSettings, load_run_config
from agent_runner.run.runner import create_run, select_cases, work_on_run
from agent_runner.run.store import RunStore, asyncpg_dsn
from agent_runner.simulated.policy import load_write_tools
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case
from crmbench_contracts.playbooks import PlaybookContent
from crmbench_contracts.teaching import TeacherCall, TeacherView
from crmbench_contracts.traces import Lane, SessionTrace, StepTrace
from crmbench_corpus.replay import resolve
from tests.agent_runner.conftest import FAST_RETRIES, ApiUnderTest, RunServices
from tests.agent_runner.fake_llm_servers import (
    ScriptedAnswer,
    anthropic_error,
    anthropic_reply,
    openai_error,
    openai_reply,
    openai_tool_call,
)
from tests.agent_runner.test_playbook_memory import EMPTY
from tests.conftest import ADMIN_KEY

WRITE_TOOLS = load_write_tools()
BOGUS = "no-such-record-qx17"
"""The value the student's write calls carry: the CRM refuses them, and a lesson that
repeats it restates the episode (the synthesis gate must refuse it)."""
STUDENT_GAVE_UP = "I could not make the change: the CRM refused it."
JUNK = "Looks fine to me, carry on!"
"""A teacher answer with no JSON object in it."""

LANES: tuple[Lane, ...] = ("coach", "paired", "escalate")


def first_lines() -> dict[str, TeacherCall]:
    """Each teacher call by the first line of its prompt template (config/prompts): how the
    fake teacher tells which call a request is."""
    lines: dict[str, TeacherCall] = {}
    for call, name in PROMPT_FILES.items():
        line = (DEFAULT_PROMPTS_DIR / name).read_text(encoding="utf-8").strip().splitlines()[0]
        lines[line] = call
    assert len(lines) == len(PROMPT_FILES), "two teacher prompts start alike"
    return lines


# ------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Pick:
    """A case and what the fakes do in it."""

    case: Case
    lane: Lane
    read_tool: str
    """The case's first reference action (a search)."""
    write_tool: str
    """The case's first write reference action: the student's (refused) write."""


def pick_cases(cases: dict[str, Case]) -> list[Pick]:
    """The first eval cases (corpus order) of distinct task categories with one user turn,
    reference actions that start with a read, include a write and expect no refusal: one
    per lane of `LANES`."""
    picks: list[Pick] = []
    categories: set[str] = set()
    for case in cases.values():
        actions = case.expected.reference_actions
        if (
            case.split != "eval"
            or len(case.turns) != 1
            or case.task_category in categories
            or not actions
            or actions[0].tool in WRITE_TOOLS
            or any(action.expect_error for action in actions)
        ):
            continue
        writes = [action.tool for action in actions if action.tool in WRITE_TOOLS]
        if not writes:
            continue
        categories.add(case.task_category)
        picks.append(Pick(case, LANES[len(picks)], actions[0].tool, writes[0]))
        if len(picks) == len(LANES):
            return picks
    raise AssertionError("the corpus has too few cases for the lanes")


def track_record_for(lane: Lane, settings: TriageSettings, category: str) -> TrackRecord | None:
    """A track record that makes the triage rule pick `lane` under `settings` (None: no
    record, the rule coaches a category it has no evidence for)."""
    if lane == "coach":
        record = None
    elif lane == "paired":
        episodes = max(settings.min_episodes, 10)
        record = TrackRecord(episodes, math.ceil(settings.paired_at * episodes))
    else:
        record = TrackRecord(max(settings.min_episodes, settings.escalate_after), 0)
    decided = triage_rule(record or TrackRecord(), settings, category)
    assert decided.lane == lane, f"no track record gives {lane} under {settings}"
    return record


# ------------------------------------------------------------------- the fake models


@dataclass
class FakeStudent:
    """The OpenAI fake's responder: in its first turn the student asks for its write (with
    `BOGUS` arguments); when the supervisor held that plan it asks again (the CRM refuses
    the call); otherwise, and after a retry request, it answers with text."""

    picks: dict[str, Pick]
    """By the user's turn."""
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Each case's request bodies, in order."""
    errors: list[str] = field(default_factory=list)

    def __call__(self, body: dict[str, Any]) -> ScriptedAnswer:
        try:
            return self.answer(body)
        except Exception as exc:  # the test fails on it, not the fake's thread
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return openai_error(400)

    def answer(self, body: dict[str, Any]) -> ScriptedAnswer:
        messages = body["messages"]
        pick = self.picks[next(m["content"] for m in messages if m["role"] == "user")]
        self.requests.setdefault(pick.case.case_id, []).append(body)
        calls = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
        held = any(m["role"] == "tool" and SUPERVISOR_HOLD in m["content"] for m in messages[-3:])
        if not calls or (len(calls) == 1 and held):
            call_id = f"call_{pick.case.case_id}_{len(calls) + 1}"
            call = openai_tool_call(call_id, pick.write_tool, {"id": BOGUS})
            return openai_reply(None, tool_calls=[call], prompt_tokens=900, completion_tokens=30)
        return openai_reply(STUDENT_GAVE_UP, prompt_tokens=950, completion_tokens=20)


@dataclass
class FakeTeacher:
    """The Anthropic fake's responder. A request with tools is the escalation agent: it
    replays the case's reference actions one tool_use per turn (resolving their references
    from the tool results it was sent), then answers with the reference reply. A request
    without tools is an `LLMTeacher` call, told apart by its prompt's first line; it
    answers valid JSON for each call (guidance, a retry, lessons), or `JUNK` for the calls
    in `junk`."""

    picks: dict[str, Pick]
    """By the user's turn."""
    junk: frozenset[TeacherCall] = frozenset()
    calls: list[tuple[str, TeacherCall | None]] = field(default_factory=list)
    """(case id, call) of every request; None for the escalation agent's turns."""
    guidance: dict[tuple[str, TeacherCall], list[str]] = field(default_factory=dict)
    """The guidance each call gave, by (case id, call)."""
    usage: dict[str, Counter[str]] = field(default_factory=dict)
    """Tokens answered per case: input, output, calls."""
    acting: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """The escalation agent's request bodies per case."""
    errors: list[str] = field(default_factory=list)
    lines: dict[str, TeacherCall] = field(default_factory=first_lines)

    def __call__(self, body: dict[str, Any]) -> ScriptedAnswer:
        try:
            return self.answer(body)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return anthropic_error(400)

    def reply(self, case_id: str, blocks: list[dict[str, Any]], stop: str) -> ScriptedAnswer:
        """An answer whose tokens are distinct per request, and accounted to the case."""
        input_tokens, output_tokens = 1000 + 7 * len(self.calls), 40 + len(self.calls)
        usage = self.usage.setdefault(case_id, Counter())
        usage.update(input=input_tokens, output=output_tokens, calls=1)
        return anthropic_reply(
            blocks, stop_reason=stop, input_tokens=input_tokens, output_tokens=output_tokens
        )

    def answer(self, body: dict[str, Any]) -> ScriptedAnswer:
        if body.get("tools"):
            return self.act(body)
        [message] = body["messages"]
        [block] = message["content"]
        text = block["text"]
        call = self.lines[text.splitlines()[0]]
        view = TeacherView.model_validate(first_json_object(text))
        case_id = view.session_id.split("/")[-2]
        self.calls.append((case_id, call))
        if call in self.junk:
            return self.reply(case_id, [{"type": "text", "text": JUNK}], "end_turn")
        pick = next(p for p in self.picks.values() if p.case.case_id == case_id)
        answer = self.lesson(pick, view) if call == "synthesis" else self.advise(pick, view, call)
        return self.reply(case_id, [{"type": "text", "text": json.dumps(answer)}], "end_turn")

    def advise(self, pick: Pick, view: TeacherView, call: TeacherCall) -> dict[str, Any]:
        if call == "plan_review":
            text = f"Find the record with {pick.read_tool} first and use the id it returns."
            answer: dict[str, Any] = {"guidance": text, "reason": "the id is guessed"}
        elif call == "step_guidance":
            last = view.steps[-1]
            text = f"{last.tool} was refused ({last.error_code}): search with {pick.read_tool}."
            answer = {"guidance": text, "reason": "the call was refused"}
        elif call == "outcome_review":
            text = f"Call {pick.write_tool} again with the id {pick.read_tool} returns."
            answer = {"retry": True, "guidance": text, "reason": "nothing was changed"}
        else:
            raise AssertionError(f"the loop made an unexpected teacher call: {call}")
        self.guidance.setdefault((pick.case.case_id, call), []).append(text)
        return answer

    def lesson(self, pick: Pick, view: TeacherView) -> dict[str, Any]:
        """A general lesson for the case's category; and, when the episode's steps carry
        `BOGUS`, one that restates it (for the gate to refuse)."""
        kind = pick.case.task_category.lower()
        good = PlaybookContent.model_validate(
            {
                "audience": "student",
                "level": "task",
                "cue": {"text": f"a user asks to {kind} in the crm", "patterns": []},
                "action": {
                    "text": f"Search with {pick.read_tool} before calling {pick.write_tool}.",
                    "tools": [pick.read_tool, pick.write_tool],
                },
                "expected_effect": "the write is made on the record the user named",
            }
        )
        candidates = [good.model_dump(mode="json")]
        if any(BOGUS in json.dumps(step.arguments) for step in view.steps):
            restating = good.model_copy(
                update={"cue": good.cue.model_copy(update={"text": f"the record {BOGUS} here"})}
            )
            candidates.append(restating.model_dump(mode="json"))
        return {"candidates": candidates}

    def act(self, body: dict[str, Any]) -> ScriptedAnswer:
        messages = body["messages"]
        turn = messages[0]["content"]
        pick = self.picks[turn if isinstance(turn, str) else turn[0]["text"]]
        case_id = pick.case.case_id
        self.calls.append((case_id, None))
        self.acting.setdefault(case_id, []).append(body)
        results = [
            parse_tool_result(block.get("content", ""))[1]
            for message in messages
            if message["role"] == "user" and isinstance(message["content"], list)
            for block in message["content"]
            if block.get("type") == "tool_result"
        ]
        actions = pick.case.expected.reference_actions
        if len(results) == len(actions):
            reply = [{"type": "text", "text": pick.case.expected.reference_reply or "Done."}]
            return self.reply(case_id, reply, "end_turn")
        action = actions[len(results)]
        blocks: list[dict[str, Any]] = [
            {
                "type": "tool_use",
                "id": f"toolu_{len(results) + 1}",
                "name": action.tool,
                "input": resolve(action.args, results),
            }
        ]
        if not results:  # a model often says what it will do first
            blocks.insert(0, {"type": "text", "text": "I will take this over."})
        return self.reply(case_id, blocks, "tool_use")


# -------------------------------------------------------------------------- fixtures


@pytest.fixture
async def empty_memory(run_services: RunServices) -> None:
    """The session database's memory and track records, emptied."""
    conn = await asyncpg.connect(asyncpg_dsn(run_services.database_url))
    try:
        await conn.execute(EMPTY)
    finally:
        await conn.close()


@pytest.fixture
def fakes(openai_api: ApiUnderTest, anthropic_api: ApiUnderTest) -> Iterator[None]:
    """The fakes, reset; the Anthropic one as a thinking model (its thinking blocks must go
    back with the turn that made them). Responders are taken off afterwards."""
    anthropic_api.fake.quirks.add("thinking")
    yield
    openai_api.fake.responder = None
    anthropic_api.fake.responder = None


def learning_config(case_ids: list[str], student: ApiUnderTest, teacher: ApiUnderTest) -> RunConfig:
    """config/run.yaml with learning on (the model teacher, the hashing embedder), the
    student's and the teacher's providers (as configured there) at the fakes."""
    base = load_run_config()
    providers = {
        role: {**base.providers[role].model_dump(mode="json"), "base_url": api.base_url}
        | FAST_RETRIES
        for role, api in (("student", student), ("teacher", teacher))
    }
    return load_run_config(
        overrides={
            "agent": "student",
            "cases": case_ids,
            "concurrency": 1,
            "providers": providers,
            "learning": {
                "mode": "on",
                "teacher": "model",
                "threshold": 0.3,
                "embeddings": {"provider": "hashing"},
            },
        }
    )


async def seed_track_records(services: RunServices, records: dict[str, TrackRecord]) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(services.database_url))
    try:
        for category, record in records.items():
            await conn.execute(
                "INSERT INTO runner.learning_task_record (task_category, episodes, passes,"
                " reward_sum) VALUES ($1, $2, $3, $4)",
                category,
                record.episodes,
                record.passes,
                float(record.passes),  # a pass scored 1.0, a failure 0 at most
            )
    finally:
        await conn.close()


async def play_learning(
    services: RunServices, config: RunConfig
) -> tuple[str, dict[str, tuple[SessionTrace, list[StepTrace]]]]:
    """Creates and plays the run in this process with the student `build_agent` makes and
    the hooks `run_learning_hooks` makes (as `crmbench run` does); (run id, traces by case)."""
    store = await RunStore.connect(services.database_url, pool_size=4)
    crm = CrmApiClient(services.crm_api_url, ADMIN_KEY)
    verifier = VerifierClient(services.verifier_url, ADMIN_KEY)
    agent = build_agent(config)
    try:
        cases = select_cases(config, list(services.cases.values()))
        run = await create_run(store, config, cases, "test-corpus", None)
        async with run_learning_hooks(config, store.pool, run_id=run.run_id) as hooks:
            assert isinstance(hooks, LearningHooks)
            await work_on_run(
                store=store,
                run_id=run.run_id,
                config=config,
                cases=services.cases,
                agent=agent,
                crm=crm,
                verifier=verifier,
                trace_dir=None,
                worker="test-worker",
                hooks=hooks,
            )
        traces = await store.traces(run.run_id)
        return run.run_id, {session.case_id: (session, steps) for session, steps in traces}
    finally:
        await agent.aclose()
        await crm.aclose()
        await verifier.aclose()
        await store.close()


async def rows(services: RunServices, sql: str, *params: object) -> list[dict[str, Any]]:
    """The query's rows as dicts, `payload`, `provenance` and `content` (jsonb) decoded."""
    conn = await asyncpg.connect(asyncpg_dsn(services.database_url))
    try:
        found = await conn.fetch(sql, *params)
    finally:
        await conn.close()
    decoded = []
    for row in found:
        item = dict(row)
        for key in ("payload", "provenance", "content"):
            if isinstance(item.get(key), str):
                item[key] = json.loads(item[key])
        decoded.append(item)
    return decoded


# ------------------------------------------------------------------ request checks


def tool_calls_answered(messages: list[dict[str, Any]]) -> None:
    """Every assistant tool call is answered by a tool message before anything else."""
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or not message.get("tool_calls"):
            continue
        ids = [call["id"] for call in message["tool_calls"]]
        following = messages[index + 1 : index + 1 + len(ids)]
        assert [m["role"] for m in following] == ["tool"] * len(ids), messages
        assert sorted(m["tool_call_id"] for m in following) == sorted(ids)


def guidance_after_tools(messages: list[dict[str, Any]], guidance: str) -> dict[str, Any]:
    """The tool message that `guidance` follows as the supervisor's system message: it
    must come right after the last tool result of a tool-calling turn."""
    expected = {"role": "system", "content": supervisor_message(guidance).content}
    assert expected in messages, (guidance, messages)
    at = messages.index(expected)
    before = messages[at - 1]
    assert before["role"] == "tool", messages
    return before


def trajectory(session: SessionTrace, kind: str) -> list[dict[str, Any]]:
    return [event for event in session.crm_context.trajectory if event["kind"] == kind]


def assert_teacher_tokens(session: SessionTrace, teacher: FakeTeacher) -> None:
    usage = session.token_usage["teacher"]
    answered = teacher.usage[session.case_id]
    assert (usage.input_tokens, usage.output_tokens, usage.calls) == (
        answered["input"],
        answered["output"],
        answered["calls"],
    )
    assert usage.cost_usd is not None and usage.cost_usd > 0


# ----------------------------------------------------------------------------- tests


async def test_coached_paired_and_escalated_episodes_through_both_sdks(
    run_services: RunServices,
    empty_memory: None,
    fakes: None,
    openai_api: ApiUnderTest,
    anthropic_api: ApiUnderTest,
) -> None:
    picks = pick_cases(run_services.cases)
    by_turn = {pick.case.turns[0].content: pick for pick in picks}
    student, teacher = FakeStudent(by_turn), FakeTeacher(by_turn)
    openai_api.fake.responder = student
    anthropic_api.fake.responder = teacher
    config = learning_config([p.case.case_id for p in picks], openai_api, anthropic_api)
    records = {
        p.case.task_category: record
        for p in picks
        if (record := track_record_for(p.lane, config.learning.triage, p.case.task_category))
    }
    await seed_track_records(run_services, records)

    run_id, traces = await play_learning(run_services, config)

    # Both strict fakes accepted every request; the responders understood every one.
    assert openai_api.fake.violations == [] and anthropic_api.fake.violations == []
    assert student.errors == [] and teacher.errors == []
    coach, paired, escalated = picks
    # Each supervision call once, in its lane (no triage: the rule decides); synthesis at
    # most once per episode, for the guided ones at least.
    asked = Counter(call for _, call in teacher.calls if call not in (None, "synthesis"))
    assert asked == Counter(plan_review=1, step_guidance=1, outcome_review=1)
    synthesized = [case_id for case_id, call in teacher.calls if call == "synthesis"]
    assert len(set(synthesized)) == len(synthesized)
    assert {coach.case.case_id, paired.case.case_id} <= set(synthesized)
    for pick in picks:
        session, _ = traces[pick.case.case_id]
        context = session.crm_context
        assert session.outcome == "completed" and session.reward is not None, session.error
        assert context.learning_mode == "on"
        assert context.lane is not None and context.lane.lane == pick.lane
        assert context.lane.source == "rule"
        assert context.supervision_transitions[0].to_lane == pick.lane
        assert_teacher_tokens(session, teacher)
        assert session.token_usage["student"].calls == len(
            student.requests.get(pick.case.case_id, [])
        )

    # Coach: the plan was held with guidance (SUPERVISOR_HOLD, no step), then the retried
    # write was refused and guided; each guidance a system message after the tool results.
    session, steps = traces[coach.case.case_id]
    [plan_text] = teacher.guidance[(coach.case.case_id, "plan_review")]
    [step_text] = teacher.guidance[(coach.case.case_id, "step_guidance")]
    final = student.requests[coach.case.case_id][-1]["messages"]
    tool_calls_answered(final)
    assert SUPERVISOR_HOLD in guidance_after_tools(final, plan_text)["content"]
    refused, error = parse_tool_result(guidance_after_tools(final, step_text)["content"])
    assert not refused and steps[0].error is not None
    assert error["code"] == steps[0].error["code"] != SUPERVISOR_HOLD
    assert [(s.tool, s.ok, s.actor) for s in steps] == [(coach.write_tool, False, "student")]
    assert steps[0].guidance == [step_text]
    sid = session.session_id
    assert [
        (e["step"], e["text"], e["teacher_call_id"]) for e in trajectory(session, "guidance")
    ] == [
        (0, plan_text, f"{sid}#teacher-plan_review-1"),
        (1, step_text, f"{sid}#teacher-step_guidance-1"),
    ]

    # Paired: the teacher ordered one retry; the student got its guidance and RETRY_REQUEST.
    session, steps = traces[paired.case.case_id]
    [retry_text] = teacher.guidance[(paired.case.case_id, "outcome_review")]
    final = student.requests[paired.case.case_id][-1]["messages"]
    tool_calls_answered(final)
    assert final[-3:] == [
        {"role": "assistant", "content": STUDENT_GAVE_UP},
        {"role": "system", "content": supervisor_message(retry_text).content},
        {"role": "user", "content": RETRY_REQUEST},
    ]
    assert session.final_answer == STUDENT_GAVE_UP
    [retry] = session.crm_context.supervision_transitions[1:]
    assert (retry.from_lane, retry.to_lane, retry.source, retry.guidance) == (
        "paired",
        "paired",
        "teacher",
        [retry_text],
    )
    sid = session.session_id
    assert [(e["text"], e["teacher_call_id"]) for e in trajectory(session, "guidance")] == [
        (retry_text, f"{sid}#teacher-outcome_review-1")
    ]

    # Escalated: the Anthropic model played it with tools (tool_use answered by
    # tool_result), its steps are the teacher's, and the student was never asked.
    session, steps = traces[escalated.case.case_id]
    assert escalated.case.case_id not in student.requests
    actions = escalated.case.expected.reference_actions
    assert [(s.tool, s.ok, s.actor) for s in steps] == [(a.tool, True, "teacher") for a in actions]
    bodies = teacher.acting[escalated.case.case_id]
    assert len(bodies) == len(actions) + 1
    last = bodies[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant"] * len(actions) + ["user"]
    for ask, answer in zip(last[1::2], last[2::2], strict=True):
        uses = [b["id"] for b in ask["content"] if b["type"] == "tool_use"]
        results = [b["tool_use_id"] for b in answer["content"] if b["type"] == "tool_result"]
        assert uses and uses == results
        empty = [b for b in ask["content"] if b["type"] == "text" and not b["text"]]
        assert empty == []
    assert session.final_answer == (escalated.case.expected.reference_reply or "Done.")
    # It read the ids it needed from the tool results it was sent: the reference passes.
    assert session.passed
    assert trajectory(session, "guidance") == []

    # The memory: the lessons of each distilled episode, with provenance naming it; the
    # restating candidate refused by the gate. The trajectory events are in Postgres too.
    events = await rows(
        run_services,
        "SELECT session_id, kind, payload FROM runner.trajectory_event WHERE run_id = $1"
        " ORDER BY event_id",
        run_id,
    )
    entries = {
        row["entry_id"]: row
        for row in await rows(
            run_services,
            "SELECT e.entry_id, e.provenance, v.content FROM runner.playbook_entry e"
            " JOIN runner.playbook_entry_version v USING (entry_id, version)",
        )
    }
    sessions = {session.case_id: session for session, _ in traces.values()}
    escalations = [e["session_id"] for e in events if e["kind"] == "escalation"]
    assert escalations == [sessions[escalated.case.case_id].session_id]
    for pick in (coach, paired):
        sid = sessions[pick.case.case_id].session_id
        [synthesis] = [
            e["payload"] for e in events if e["session_id"] == sid and e["kind"] == "synthesis"
        ]
        assert synthesis["teacher_call_id"] == f"{sid}#teacher-synthesis-1"
        [(entry_id, outcome)] = synthesis["stored"].items()
        assert outcome == "created"
        provenance = entries[entry_id]["provenance"]
        assert (provenance["episode_ids"], provenance["run_ids"]) == ([sid], [run_id])
        assert provenance["teacher_call_ids"] == [synthesis["teacher_call_id"]]
        # The stored lesson holds none of its episode's values (the gate's own measure).
        content = json.dumps(entries[entry_id]["content"]).lower()
        turns = [turn.content for turn in pick.case.turns]
        values = case_values(turns, traces[pick.case.case_id][1], [])
        assert BOGUS in values and not [v for v in values if v in content]
        [refused] = synthesis["refused"]
        assert refused["gate"] == "restates_case" and BOGUS in refused["reason"]
        guided = [
            e["payload"] for e in events if e["session_id"] == sid and e["kind"] == "guidance"
        ]
        assert guided == trajectory(sessions[pick.case.case_id], "guidance")
    assert set(entries) == {
        entry_id for e in events if e["kind"] == "synthesis" for entry_id in e["payload"]["stored"]
    }

    # The track records count the student's episodes, not the escalated one.
    after = {
        row["task_category"]: TrackRecord(row["episodes"], row["passes"])
        for row in await rows(run_services, "SELECT * FROM runner.learning_task_record")
    }
    for pick in picks:
        before = records.get(pick.case.task_category, TrackRecord())
        played = 0 if pick.lane == "escalate" else 1
        passed = int(sessions[pick.case.case_id].passed) * played
        assert after[pick.case.task_category] == TrackRecord(
            before.episodes + played, before.passes + passed
        )


async def test_a_teacher_answering_junk_leaves_the_episode_scored_and_the_memory_empty(
    run_services: RunServices,
    empty_memory: None,
    fakes: None,
    openai_api: ApiUnderTest,
    anthropic_api: ApiUnderTest,
) -> None:
    [pick, *_] = pick_cases(run_services.cases)  # coached: no track record
    by_turn = {pick.case.turns[0].content: pick}
    student = FakeStudent(by_turn)
    teacher = FakeTeacher(by_turn, junk=frozenset({"plan_review", "synthesis"}))
    openai_api.fake.responder = student
    anthropic_api.fake.responder = teacher
    config = learning_config([pick.case.case_id], openai_api, anthropic_api)

    run_id, traces = await play_learning(run_services, config)

    assert openai_api.fake.violations == [] and anthropic_api.fake.violations == []
    assert student.errors == [] and teacher.errors == []
    session, steps = traces[pick.case.case_id]
    sid = session.session_id
    assert session.outcome == "completed" and session.reward is not None, session.error
    assert session.crm_context.lane is not None and session.crm_context.lane.lane == "coach"
    assert [c for _, c in teacher.calls] == ["plan_review", "step_guidance", "synthesis"]
    # The three calls' tokens, the failed ones' and synthesis's (after the reward) too.
    assert_teacher_tokens(session, teacher)

    # No plan review: the write was made (and refused) and guided after; nothing held.
    requests = student.requests[pick.case.case_id]
    assert not any(SUPERVISOR_HOLD in json.dumps(body) for body in requests)
    [step_text] = teacher.guidance[(pick.case.case_id, "step_guidance")]
    guidance_after_tools(requests[-1]["messages"], step_text)
    assert [(s.tool, s.ok) for s in steps] == [(pick.write_tool, False)]
    [failed] = trajectory(session, "teacher_call")
    assert (failed["call"], failed["teacher_call_id"], failed["raw_text"]) == (
        "plan_review",
        f"{sid}#teacher-plan_review-1",
        JUNK,
    )
    assert "no JSON object" in failed["error"]

    # Synthesis: its error is an event, and nothing entered the memory.
    events = await rows(
        run_services,
        "SELECT kind, payload FROM runner.trajectory_event WHERE session_id = $1 ORDER BY event_id",
        sid,
    )
    failures = {e["payload"]["call"]: e["payload"] for e in events if e["kind"] == "teacher_call"}
    assert set(failures) == {"plan_review", "synthesis"}
    assert failures["synthesis"]["teacher_call_id"] == f"{sid}#teacher-synthesis-1"
    assert "no JSON object" in failures["synthesis"]["error"]
    [synthesis] = [e["payload"] for e in events if e["kind"] == "synthesis"]
    assert synthesis["stored"] == {} and synthesis["refused"] == []
    assert await rows(run_services, "SELECT entry_id FROM runner.playbook_entry") == []
    assert sid.startswith(run_id + "/")
