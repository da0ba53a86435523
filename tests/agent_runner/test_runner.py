"""Runs end to end against real Postgres, the real CRM API and the real verifier over HTTP:
baselines, the tool loop and its limits, the queue's exactly-once results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agent_runner.agents.base import Agent, AgentResult, EpisodeContext
from agent_runner.agents.baselines import OracleAgent, RandomAgent
from agent_runner.agents.llm_agent import LLMAgent, SystemPrompt
from agent_runner.protocol import parse_tool_result
from agent_runner.run.config import RunConfig
from agent_runner.run.hooks import EpisodeHooks, Guidance, NoHooks
from agent_runner.run.runner import (
    MAX_START_ATTEMPTS,
    RunStopped,
    WorkerStats,
    create_run,
    select_cases,
    work_on_run,
)
from agent_runner.run.store import Claim, RunStore, asyncpg_dsn
from agent_runner.run.trace_log import complete_blocks
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceUnavailable
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.traces import (
    LaneDecision,
    PlaybookRetrieval,
    SessionTrace,
    StepTrace,
    SupervisionTransition,
)
from crmbench_llm import Message, ScriptedProvider, ToolCall
from crmbench_llm.base import LLMError
from crmbench_llm.types import Completion, Usage
from tests.agent_runner.conftest import ApiUnderTest, RunServices, stratified_sample
from tests.agent_runner.fake_llm_servers import (
    ANTHROPIC_QUIRKS,
    OPENAI_QUIRKS,
    anthropic_reply,
    openai_reply,
    openai_tool_call,
)
from tests.conftest import ADMIN_KEY

BASE_PROMPT = (Path(__file__).parents[2] / "config/prompts/agent_system.md").read_text()


def run_config(**values: Any) -> RunConfig:
    return RunConfig.model_validate({"agent": "oracle", "concurrency": 4, **values})


async def execute(
    services: RunServices,
    config: RunConfig,
    out: Path | None,
    agent: Agent,
    *,
    worker: str = "test-worker",
    hooks: EpisodeHooks | None = None,
) -> tuple[str, WorkerStats, RunStore]:
    store = await RunStore.connect(services.database_url, pool_size=4)
    cases = select_cases(config, list(services.cases.values()))
    run = await create_run(store, config, cases, "test-corpus", str(out) if out else None)
    crm = CrmApiClient(services.crm_api_url, ADMIN_KEY)
    verifier = VerifierClient(services.verifier_url, ADMIN_KEY)
    try:
        stats = await work_on_run(
            store=store,
            run_id=run.run_id,
            config=config,
            cases=services.cases,
            agent=agent,
            crm=crm,
            verifier=verifier,
            trace_dir=out,
            worker=worker,
            hooks=hooks,
        )
    except BaseException:
        await store.close()
        raise
    finally:
        await agent.aclose()
        await crm.aclose()
        await verifier.aclose()
    return run.run_id, stats, store


def read_trace_file(path: Path) -> tuple[list[SessionTrace], list[StepTrace]]:
    sessions, steps = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "session":
            sessions.append(SessionTrace.model_validate(record))
        else:
            steps.append(StepTrace.model_validate(record))
    return sessions, steps


async def test_oracle_passes_every_case_of_a_stratified_eval_sample(
    run_services: RunServices, tmp_path: Path
) -> None:
    ids = stratified_sample(run_services.cases)
    config = run_config(cases=ids)
    run_id, stats, store = await execute(run_services, config, tmp_path, OracleAgent())
    try:
        traces = await store.traces(run_id)
        progress = await store.progress(run_id)
    finally:
        await store.close()
    assert stats.completed == len(ids) and progress.done == len(ids)
    failed = [(s.case_id, s.score, s.error) for s, _ in traces if not s.passed]
    assert failed == []
    # The JSONL file holds the same sessions and steps as Postgres, once each.
    sessions, steps = read_trace_file(tmp_path / "sessions.jsonl")
    assert sorted(s.session_id for s in sessions) == sorted(s.session_id for s, _ in traces)
    assert len(steps) == sum(len(step_list) for _, step_list in traces)
    # Write steps carry the state change they caused, from the CRM API's change log.
    writes = [step for step in steps if step.ok and not step.tool.endswith("_search")]
    assert writes and any(step.state_change for step in writes)
    assert all(s.crm_context.split == "eval" for s in sessions)
    # The trace says how the reply was read, as the verifier's record does (no judges here).
    for session in [*sessions, *(s for s, _ in traces)]:
        assert session.reward is not None
        assert session.crm_context.verification_mode == session.reward.verification_mode
        assert session.crm_context.verification_mode == "offline"


async def test_random_agent_stays_under_ten_percent(
    run_services: RunServices, tmp_path: Path
) -> None:
    ids = stratified_sample(run_services.cases, per_group=2)
    config = run_config(agent="random", cases=ids, seed=7)
    run_id, _, store = await execute(run_services, config, None, RandomAgent())
    try:
        progress = await store.progress(run_id)
    finally:
        await store.close()
    assert progress.done == len(ids)
    assert progress.passed / progress.done < 0.10


def scripted_agent(provider: ScriptedProvider) -> LLMAgent:
    prompt = SystemPrompt("You act for $actor_name ($actor_role). Today is $today.$guidance")
    return LLMAgent("student", provider, "scripted", prompt)


def turn(*calls: tuple[str, dict[str, Any]], text: str = "", tokens: int = 10) -> Completion:
    message = Message.assistant(
        text,
        [ToolCall(id=f"c{i}", name=name, arguments=args) for i, (name, args) in enumerate(calls)],
    )
    return Completion(
        message=message,
        stop_reason="tool_calls" if calls else "end",
        usage=Usage(input_tokens=tokens, output_tokens=tokens // 2),
        cost_usd=0.001,
        model="scripted",
        provider="scripted",
    )


async def play_scripted(
    run_services: RunServices,
    provider: ScriptedProvider,
    case_id: str = "CRM-00001",
    **settings: Any,
) -> tuple[SessionTrace, list[StepTrace]]:
    """One episode of `case_id` by the scripted student (run config `settings` on top),
    through the real services; its session and steps as the store holds them."""
    config = run_config(
        agent="student",
        cases=[case_id],
        providers={"student": {"provider": "scripted", "model": "scripted"}},
        **settings,
    )
    run_id, _, store = await execute(run_services, config, None, scripted_agent(provider))
    try:
        [(session, steps)] = await store.traces(run_id)
    finally:
        await store.close()
    return session, steps


async def test_tool_loop_sends_results_and_refusals_back_and_records_steps(
    run_services: RunServices,
) -> None:
    case_id = "CRM-00001"
    provider = ScriptedProvider(model="scripted").then(
        turn(("client_search", {"criteria": {"name": "Quarry Software"}})),
        turn(("create_new_client", {"name": ""})),
        turn(text="Emberton Onboarding Package belongs to Emberton Pharma, not Quarry Software."),
    )
    session, steps = await play_scripted(run_services, provider, case_id)
    assert [s.tool for s in steps] == ["client_search", "create_new_client"]
    assert steps[0].ok and steps[0].result["items"]
    assert not steps[1].ok and steps[1].error is not None and steps[1].status == 422
    # The model saw the refusal with its machine code, as the next call's tool message.
    third_call = provider.calls[2]
    ok, body = parse_tool_result(third_call.messages[-1].content)
    assert not ok and body["code"] == steps[1].error["code"]
    assert "Today is" in (third_call.system or "")
    assert session.outcome == "completed" and session.passed
    assert session.token_usage["student"].calls == 3
    assert session.token_usage["student"].input_tokens == 30
    assert session.cost_usd == pytest.approx(0.003)
    assert steps[0].tokens.input_tokens == 10 and steps[0].llm_latency_ms >= 0


class RecordingHooks:
    """Episode hooks that note what each call saw, and hand back the given guidance."""

    def __init__(self, guidance: Guidance | None) -> None:
        self.guidance = guidance
        self.calls: list[tuple[Any, ...]] = []

    async def before_act(self, ctx: EpisodeContext) -> Guidance | None:
        self.calls.append(
            ("before_act", ctx.session_id, len(ctx.steps), ctx.usage["student"].calls)
        )
        return self.guidance

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> None:
        self.calls.append(
            (
                "after_act",
                ctx.session_id,
                [s.tool for s in ctx.steps],
                result.final_reply,
                result.outcome,
            )
        )

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        self.calls.append(
            (
                "after_reward",
                ctx.session_id,
                result.final_reply,
                reward.case_id,
                reward.score,
                [s.reward for s in ctx.steps],
            )
        )


async def test_episode_hooks_are_called_in_order_and_their_guidance_reaches_the_prompt(
    run_services: RunServices, tmp_path: Path
) -> None:
    case_id = "CRM-00001"
    reply = "Emberton Onboarding Package belongs to Emberton Pharma, not Quarry Software."
    provider = ScriptedProvider(model="scripted").then(
        turn(("client_search", {"criteria": {"name": "Quarry Software"}})),
        turn(("create_new_client", {"name": ""})),
        turn(text=reply),
    )
    agent = LLMAgent(
        "student",
        provider,
        "scripted",
        SystemPrompt("You act for $actor_name. Today is $today.\n$guidance"),
        guidance="Search before you write.",
    )
    retrieval = PlaybookRetrieval(
        entry_id="pb-7", similarity=0.83, cue_match="semantic", injected=True
    )
    lane = LaneDecision(lane="coach", reason="new workflow", confidence=0.6, source="rule")
    hooks = RecordingHooks(
        Guidance(text="Names must not be blank.", retrievals=[retrieval], lane=lane)
    )
    config = run_config(
        agent="student",
        cases=[case_id],
        providers={"student": {"provider": "scripted", "model": "scripted"}},
    )
    run_id, _, store = await execute(run_services, config, tmp_path, agent, hooks=hooks)
    try:
        [(session, steps)] = await store.traces(run_id)
    finally:
        await store.close()
    session_id = f"{run_id}/{case_id}/0"
    assert session.passed
    assert hooks.calls == [
        ("before_act", session_id, 0, 0),
        ("after_act", session_id, ["client_search", "create_new_client"], reply, "completed"),
        ("after_reward", session_id, reply, case_id, session.score, [session.score] * 2),
    ]
    # The episode's guidance follows the agent's own in the $guidance slot, on every call.
    systems = {call.system or "" for call in provider.calls}
    assert len(provider.calls) == 3 and len(systems) == 1
    assert systems.pop().endswith("\nSearch before you write.\n\nNames must not be blank.")
    # What before_act chose is in the session's crm_context, typed, in Postgres and JSONL.
    transition = SupervisionTransition(
        step=0, to_lane="coach", reason="new workflow", confidence=0.6, source="rule"
    )
    sessions, _ = read_trace_file(tmp_path / "sessions.jsonl")
    for traced in (session, *sessions):
        assert traced.crm_context.playbooks_retrieved == [retrieval]
        assert traced.crm_context.supervision_transitions == [transition]
    assert all(step.guidance == [] for step in steps)


class FailingHooks(NoHooks):
    """Hooks whose `failing` hook raises a setup error of the teacher's provider (401)."""

    def __init__(self, failing: str) -> None:
        self.failing = failing

    def _maybe_fail(self, hook: str) -> None:
        if hook == self.failing:
            raise LLMError("invalid x-api-key", code="http_error", provider="anthropic", status=401)

    async def before_act(self, ctx: EpisodeContext) -> Guidance | None:
        self._maybe_fail("before_act")
        return None

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> None:
        self._maybe_fail("after_act")

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        self._maybe_fail("after_reward")


@pytest.mark.parametrize("failing", ["before_act", "after_act", "after_reward"])
async def test_a_failing_hook_is_never_taken_for_the_agents_provider(
    run_services: RunServices, failing: str
) -> None:
    """A teacher's 401 inside a hook neither stops the run (as the agent's own 401 would)
    nor replays the episode; after_reward's failure keeps the reward already earned."""
    config = run_config(agent="oracle", cases=["CRM-00001"])
    run_id, stats, store = await execute(
        run_services, config, None, OracleAgent(), hooks=FailingHooks(failing)
    )
    try:
        [(session, _)] = await store.traces(run_id)
    finally:
        await store.close()
    assert stats.completed == 1 and not stats.failures
    assert f"the {failing} hook failed: LLMError" in (session.error or "")
    if failing == "after_reward":
        assert session.outcome == "completed" and session.passed and session.score == 1.0
    else:
        assert session.outcome == "harness_error" and not session.passed


async def test_without_hooks_the_prompt_has_only_the_agents_guidance(
    run_services: RunServices,
) -> None:
    provider = ScriptedProvider(model="scripted").then(turn(text="Nothing to do."))
    agent = LLMAgent("student", provider, "scripted", SystemPrompt("Today is $today.|$guidance|"))
    config = run_config(
        agent="student",
        cases=["CRM-00001"],
        providers={"student": {"provider": "scripted", "model": "scripted"}},
    )
    run_id, _, store = await execute(run_services, config, None, agent)
    try:
        [(session, _)] = await store.traces(run_id)
    finally:
        await store.close()
    assert (provider.calls[0].system or "").endswith("||")
    assert session.crm_context.playbooks_retrieved == []
    assert session.crm_context.supervision_transitions == []


async def test_step_limit_and_token_budget_end_the_episode(run_services: RunServices) -> None:
    looping = ScriptedProvider(model="scripted").when(
        lambda _: True, turn(("client_search", {"criteria": {"name": "Quarry"}}))
    )
    session, steps = await play_scripted(run_services, looping, limits={"max_steps": 3})
    assert session.outcome == "step_limit" and len(steps) == 3
    assert "step limit" in (session.error or "")

    greedy = ScriptedProvider(model="scripted").when(
        lambda _: True, turn(("client_search", {"criteria": {"name": "Quarry"}}), tokens=400)
    )
    session, steps = await play_scripted(run_services, greedy, limits={"max_tokens": 1000})
    assert session.outcome == "token_budget" and len(steps) == 1
    assert not session.passed


async def test_calls_that_cannot_be_made_are_steps_and_count_toward_the_step_limit(
    run_services: RunServices,
) -> None:
    """A model repeating a call that names no tool is answered 400 each time, every call
    is a step of the trace, and the step limit ends the loop."""
    looping = ScriptedProvider(model="scripted").when(lambda _: True, turn(("", {})))
    max_steps = 3
    session, steps = await play_scripted(run_services, looping, limits={"max_steps": max_steps})
    assert session.outcome == "step_limit" and len(steps) == max_steps
    assert [(s.tool, s.status, s.ok) for s in steps] == [("", 400, False)] * max_steps
    assert all(s.error and s.error["code"] == "INVALID_REQUEST" for s in steps)
    assert {s.error["field"] for s in steps if s.error} == {"name"}
    assert [s.step_id for s in steps] == list(range(1, max_steps + 1))
    # The model saw each refusal as its call's tool result.
    ok, body = parse_tool_result(looping.calls[1].messages[-1].content)
    assert not ok and body["code"] == "INVALID_REQUEST" and "names no tool" in body["message"]


async def test_a_failed_model_call_is_an_agent_error_that_is_still_scored(
    run_services: RunServices,
) -> None:
    empty = ScriptedProvider(model="scripted")  # raises script_exhausted on the first call
    session, _ = await play_scripted(run_services, empty)
    assert session.outcome == "agent_error" and "script_exhausted" in (session.error or "")
    assert session.reward is not None and not session.passed


async def test_an_unreachable_verifier_is_a_harness_error(
    run_services: RunServices,
) -> None:
    broken = RunServices(
        run_services.database_url,
        run_services.crm_api_url,
        "http://127.0.0.1:9",  # nothing listens on the discard port
        run_services.cases,
    )
    run_id, _, store = await execute(broken, run_config(cases=["CRM-00002"]), None, OracleAgent())
    try:
        [(session, _)] = await store.traces(run_id)
    finally:
        await store.close()
    assert session.outcome == "harness_error" and "verifier" in (session.error or "")
    assert session.crm_context.verification_mode is None  # never verified


async def test_claims_of_a_dead_worker_are_taken_over_and_its_late_result_is_dropped(
    run_services: RunServices,
) -> None:
    config = run_config(cases=["CRM-00003"])
    dead = await RunStore.connect(run_services.database_url, pool_size=1)
    cases = select_cases(config, list(run_services.cases.values()))
    run = await create_run(dead, config, cases, "test", None)
    claim = await dead.claim(run.run_id, "dead-worker", lease_seconds=3600)
    assert claim is not None
    live = await RunStore.connect(run_services.database_url, pool_size=1)
    try:
        # While the first worker's liveness connection is open, its claim is held.
        assert await live.claim(run.run_id, "live-worker", 3600) is None
        assert dead._liveness is not None
        await dead._liveness.close()
        taken: Claim | None = None
        for _ in range(50):  # the backend exits as soon as it sees the socket close
            taken = await live.claim(run.run_id, "live-worker", 3600)
            if taken is not None:
                break
            conn = await asyncpg.connect(asyncpg_dsn(run_services.database_url))
            await conn.execute("SELECT pg_sleep(0.05)")
            await conn.close()
        assert taken is not None and taken.attempts == 2
        session = SessionTrace.model_validate(
            {
                "session_id": f"{run.run_id}/CRM-00003/0",
                "run_id": run.run_id,
                "case_id": "CRM-00003",
                "trial": 0,
                "agent": "oracle",
                "task": "t",
                "outcome": "completed",
                "crm_context": {
                    "case_id": "CRM-00003",
                    "task_category": "x",
                    "workflow": "x",
                    "difficulty": "simple",
                    "split": "eval",
                },
                "started_at": "2026-11-27T00:00:00Z",
                "ended_at": "2026-11-27T00:00:01Z",
                "wall_ms": 1000,
                "agent_ms": 0,
            }
        )
        # The presumed-dead worker finishes late: its result must not count.
        assert not await dead.complete(claim, "dead-worker", session, [])
        assert await live.complete(taken, "live-worker", session, [])
        assert (await live.progress(run.run_id)).done == 1
        assert len(await live.traces(run.run_id)) == 1
    finally:
        await dead.pool.close()
        await live.close()


def test_trace_blocks_drop_a_cut_off_episode_and_repeats() -> None:
    def block(session_id: str, steps: int) -> bytes:
        head = json.dumps(
            {"type": "session", "session_id": session_id, "steps": steps}, separators=(",", ":")
        )
        lines = [head] + [json.dumps({"type": "step", "step_id": i}) for i in range(1, steps + 1)]
        return ("\n".join(lines) + "\n").encode()

    good = block("a", 2) + block("b", 0)
    blocks, damaged = complete_blocks(good)
    assert [sid for sid, _ in blocks] == ["a", "b"] and not damaged
    cut = good + block("c", 3)[:-30]
    blocks, damaged = complete_blocks(cut)
    assert [sid for sid, _ in blocks] == ["a", "b"] and damaged
    repeated = good + block("a", 2)
    blocks, damaged = complete_blocks(repeated)
    assert [sid for sid, _ in blocks] == ["a", "b"] and damaged


async def test_simulated_student_passes_exactly_when_its_configured_draws_say_so(
    run_services: RunServices, tmp_path: Path
) -> None:
    """The simulated LLM, served over HTTP and reached through the OpenAI SDK, on every
    20th eval case, through the real runner, CRM API and verifier: an episode passes
    exactly when the policy drew no mistake, or drew a trap it recovers from. So the
    measured pass rate recovers the configured rates (the whole eval split is checked in
    the acceptance run, see README)."""
    from agent_runner.agents.factory import build_agent
    from agent_runner.simulated import SimulatedLLMConfig, SimulatedPolicy
    from agent_runner.simulated.config import default_config_path
    from agent_runner.simulated.server import running_simulated_llm

    eval_ids = [c.case_id for c in run_services.cases.values() if c.split == "eval"]
    ids = eval_ids[::20]
    sim_config = SimulatedLLMConfig.from_yaml(default_config_path())
    config = run_config(agent="simulated", cases=ids, concurrency=8)
    with running_simulated_llm(sim_config, run_services.cases) as url:
        agent = build_agent(config, simulated_url=url)
        run_id, _, store = await execute(run_services, config, tmp_path, agent)
    try:
        traces = await store.traces(run_id)
    finally:
        await store.close()
    sessions = [s for s, _ in traces]
    assert len(sessions) == len(ids)
    assert all(s.outcome == "completed" for s in sessions)

    policy = SimulatedPolicy(sim_config, run_services.cases)
    system = BASE_PROMPT

    def predicted(case_id: str, trial: int) -> bool:
        case = run_services.cases[case_id]
        if not policy.decide(case, trial, system).mistake:
            return True
        if case.failure is None:
            return False
        refused = any(a.expect_error for a in case.failure.trap.naive_actions)
        rule = sim_config.category_rule(case.failure.category)
        return refused and policy.draw(case_id, trial, "recovery") < rule.recovery_rate

    wrong = [s.case_id for s in sessions if s.passed != predicted(s.case_id, s.trial)]
    assert wrong == []
    assert 0 < sum(s.passed for s in sessions) < len(sessions)  # both outcomes occur
    # It is a model as far as the harness knows: tokens and cost are accounted.
    assert all(s.token_usage["student"].calls >= 1 for s in sessions)
    assert all(s.cost_usd is not None and s.cost_usd > 0 for s in sessions)


async def test_student_and_teacher_play_an_episode_through_their_real_sdks(
    run_services: RunServices, api: ApiUnderTest
) -> None:
    """The OpenAI (student) and Anthropic (teacher) agents, built from a run config as
    `crmbench run` builds them, against local servers speaking each API."""
    from agent_runner.agents.factory import build_agent

    search = {"criteria": {"name": "Quarry Software"}}
    reply = "That deal belongs to Emberton Pharma, not Quarry Software, so I did not draft it."
    if api.provider == "openai":
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "client_search", "arguments": json.dumps(search)},
        }
        api.fake.script(openai_reply(None, tool_calls=[call]), openai_reply(reply))
    else:
        api.fake.script(
            anthropic_reply(
                [{"type": "tool_use", "id": "toolu_1", "name": "client_search", "input": search}],
                stop_reason="tool_use",
            ),
            anthropic_reply([{"type": "text", "text": reply}]),
        )
    agent_name = "student" if api.provider == "openai" else "teacher"
    config = run_config(
        agent=agent_name,
        cases=["CRM-00001"],
        providers={agent_name: api.config().model_dump()},
    )
    run_id, _, store = await execute(run_services, config, None, build_agent(config))
    try:
        [(session, steps)] = await store.traces(run_id)
    finally:
        await store.close()
    assert session.passed and session.model == api.model
    assert [(s.tool, s.ok) for s in steps] == [("client_search", True)]
    usage = session.token_usage["student" if agent_name == "student" else "teacher"]
    assert usage.calls == 2 and usage.input_tokens == 20
    assert session.cost_usd is not None and session.cost_usd > 0
    first, second = api.fake.received
    crm = CrmApiClient(run_services.crm_api_url, ADMIN_KEY)
    try:
        offered = await crm.tools()
    finally:
        await crm.aclose()
    assert len(first.body["tools"]) == len(offered)
    # The tool's real result went back to the model in the second request.
    assert "Quarry Software" in json.dumps(second.body["messages"][-1])


class OutageAtFirstOpen(CrmApiClient):
    """The real CRM API client, with the CRM API unreachable for the first episode open."""

    failures_left = 1

    async def open_episode(self, case_id: str | None = None, **fields: Any) -> Any:
        if self.failures_left:
            self.failures_left -= 1
            raise ServiceUnavailable("crm_api", "connection refused (injected outage)")
        return await super().open_episode(case_id, **fields)


async def test_an_episode_that_could_not_be_opened_is_retried_not_failed(
    run_services: RunServices,
) -> None:
    config = run_config(cases=["CRM-00004"], concurrency=1)
    store = await RunStore.connect(run_services.database_url, pool_size=2)
    run = await create_run(
        store, config, select_cases(config, list(run_services.cases.values())), "t", None
    )
    crm = OutageAtFirstOpen(run_services.crm_api_url, ADMIN_KEY)
    verifier = VerifierClient(run_services.verifier_url, ADMIN_KEY)
    try:
        await work_on_run(
            store=store,
            run_id=run.run_id,
            config=config,
            cases=run_services.cases,
            agent=OracleAgent(),
            crm=crm,
            verifier=verifier,
            trace_dir=None,
        )
        [(session, _)] = await store.traces(run.run_id)
        rows = await store.pool.fetch(
            "SELECT attempts FROM runner.run_items WHERE run_id = $1", run.run_id
        )
    finally:
        await crm.aclose()
        await verifier.aclose()
        await store.close()
    assert crm.failures_left == 0
    assert session.outcome == "completed" and session.passed
    assert rows[0]["attempts"] == 2


@pytest.mark.parametrize("quirk", sorted(OPENAI_QUIRKS | ANTHROPIC_QUIRKS))
async def test_a_run_against_a_server_with_each_quirk_scores_the_case(
    run_services: RunServices,
    openai_api: ApiUnderTest,
    anthropic_api: ApiUnderTest,
    quirk: str,
) -> None:
    """The student (OpenAI-compatible) or the teacher (Anthropic, thinking) against a
    server sending `quirk`: the episode is played and scored, and the strict fake saw no
    request the real API would refuse."""
    from agent_runner.agents.factory import build_agent

    api = openai_api if quirk in OPENAI_QUIRKS else anthropic_api
    api.fake.quirks.add(quirk)
    search = {"criteria": {"name": "Quarry Software"}}
    reply = "That deal belongs to Emberton Pharma, not Quarry Software, so I did not draft it."
    if api.provider == "openai":
        calls = [openai_tool_call("call_1", "client_search", search)]
        api.fake.script(openai_reply(None, tool_calls=calls), openai_reply(reply))
    else:
        use = {"type": "tool_use", "id": "toolu_1", "name": "client_search", "input": search}
        api.fake.script(
            anthropic_reply([use], stop_reason="tool_use"),
            anthropic_reply([{"type": "text", "text": reply}]),
        )
    agent_name = "student" if api.provider == "openai" else "teacher"
    config = run_config(
        agent=agent_name, cases=["CRM-00001"], providers={agent_name: api.config().model_dump()}
    )
    run_id, _, store = await execute(run_services, config, None, build_agent(config))
    try:
        [(session, steps)] = await store.traces(run_id)
    finally:
        await store.close()
    assert session.outcome == "completed" and session.passed, session.error
    assert [(s.tool, s.ok) for s in steps] == [("client_search", True)]
    assert api.fake.violations == []
    assert len(api.fake.received) == 2


async def test_a_refused_api_key_stops_the_run_unscored_and_a_resume_plays_it(
    run_services: RunServices, openai_api: ApiUnderTest
) -> None:
    from agent_runner.agents.factory import build_agent

    openai_api.fake.script(openai_api.error(401))
    config = run_config(
        agent="student",
        cases=["CRM-00001", "CRM-00002"],
        concurrency=1,
        providers={"student": openai_api.config().model_dump()},
    )
    with pytest.raises(RunStopped) as stopped:
        await execute(run_services, config, None, build_agent(config))

    assert stopped.value.error.status == 401 and "API key was refused" in str(stopped.value)
    store = await RunStore.connect(run_services.database_url, pool_size=2)
    crm = CrmApiClient(run_services.crm_api_url, ADMIN_KEY)
    verifier = VerifierClient(run_services.verifier_url, ADMIN_KEY)
    agent = build_agent(config)
    try:
        run_id = stopped.value.run_id
        progress = await store.progress(run_id)
        assert (progress.done, progress.harness_errors, progress.pending) == (0, 0, 2)
        assert await store.traces(run_id) == []
        # With a working key the same run plays both episodes, once each.
        for _ in range(2):
            openai_api.fake.script(openai_reply("Nothing to do."))
        await work_on_run(
            store=store,
            run_id=run_id,
            config=config,
            cases=run_services.cases,
            agent=agent,
            crm=crm,
            verifier=verifier,
            trace_dir=None,
        )
        traces = await store.traces(run_id)
    finally:
        await agent.aclose()
        await crm.aclose()
        await verifier.aclose()
        await store.close()
    assert sorted(s.case_id for s, _ in traces) == ["CRM-00001", "CRM-00002"]
    assert all(s.outcome == "completed" for s, _ in traces)


async def test_a_provider_outage_is_retried_then_a_harness_error_never_a_score(
    run_services: RunServices, openai_api: ApiUnderTest
) -> None:
    from agent_runner.agents.factory import build_agent

    openai_api.fake.script(*(openai_api.error(503) for _ in range(MAX_START_ATTEMPTS)))
    config = run_config(
        agent="student",
        cases=["CRM-00001"],
        providers={"student": openai_api.config(max_retries=0).model_dump()},
    )
    run_id, _, store = await execute(run_services, config, None, build_agent(config))
    try:
        [(session, steps)] = await store.traces(run_id)
        rows = await store.pool.fetch(
            "SELECT attempts FROM runner.run_items WHERE run_id = $1", run_id
        )
    finally:
        await store.close()
    assert rows[0]["attempts"] == MAX_START_ATTEMPTS
    assert session.outcome == "harness_error" and session.reward is None
    assert "503" in (session.error or "") and steps == []


async def test_a_call_with_nan_arguments_is_the_models_mistake_and_the_episode_is_scored(
    run_services: RunServices, openai_api: ApiUnderTest
) -> None:
    """Arguments holding NaN (which Python's json reads and no JSON API accepts) are a
    malformed call the model is told about, not a crash of the CRM client: the episode
    is played on and scored, and what goes back to the server is valid."""
    from agent_runner.agents.factory import build_agent

    openai_api.fake.quirks.add("arguments_as_object")
    bad = openai_tool_call("call_1", "client_search", {"criteria": {"name": float("nan")}})
    good = openai_tool_call("call_2", "client_search", {"criteria": {"name": "Quarry Software"}})
    reply = "That deal belongs to Emberton Pharma, not Quarry Software, so I did not draft it."
    openai_api.fake.script(
        openai_reply(None, tool_calls=[bad]),
        openai_reply(None, tool_calls=[good]),
        openai_reply(reply),
    )
    config = run_config(
        agent="student",
        cases=["CRM-00001"],
        providers={"student": openai_api.config().model_dump()},
    )
    run_id, _, store = await execute(run_services, config, None, build_agent(config))
    try:
        [(session, steps)] = await store.traces(run_id)
    finally:
        await store.close()
    assert session.outcome == "completed" and session.reward is not None, session.error
    assert session.passed
    # The malformed call never reached the CRM API; the model was told, then searched.
    # The trace shows both calls: the first refused by the agent, its raw text kept.
    assert [(s.tool, s.ok, s.status) for s in steps] == [
        ("client_search", False, 400),
        ("client_search", True, 200),
    ]
    assert steps[0].error is not None and steps[0].arguments == {}
    assert steps[0].error["code"] == "INVALID_REQUEST" and "NaN" in steps[0].error["raw_arguments"]
    assert steps[0].error["field"] == "arguments"
    assert steps[0].latency_ms == 0 and steps[0].tokens.input_tokens > 0  # its turn's tokens
    told = openai_api.fake.received[1].body["messages"][-1]
    assert told["role"] == "tool" and "JSON object" in told["content"]
    assert "raw_arguments" not in told["content"]  # the model is not sent its own text back
    assert openai_api.fake.violations == []
