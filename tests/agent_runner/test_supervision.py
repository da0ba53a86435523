"""The teacher's hand in an LLM agent's tool loop, on a real CRM API episode: a held plan
is not made and is answered `SUPERVISOR_HOLD`, guidance after a refused call and before a
retry reaches the model as system messages after the turn's tool results, and a tool
subset widens to every tool when the model asks for one outside it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent_runner.agents.base import EpisodeContext, EpisodeLimits
from agent_runner.agents.llm_agent import (
    RETRY_REQUEST,
    SUPERVISOR_HOLD,
    LLMAgent,
    SystemPrompt,
)
from agent_runner.protocol import parse_tool_result
from crmbench_clients.crm_api import CrmApiClient
from crmbench_contracts.traces import StepTrace
from crmbench_llm import Message, ScriptedProvider, ToolCall
from crmbench_llm.types import ToolSpec
from tests.agent_runner.conftest import RunServices
from tests.conftest import ADMIN_KEY

CASE = "CRM-00002"  # update Zephyr Annual License: stage Proposal, probability 60%


class RecordingSupervisor:
    """Holds the first plan, guides after each refusal, orders one retry; records all."""

    def __init__(self) -> None:
        self.plans: list[list[str]] = []
        self.refused: list[StepTrace] = []
        self.replies: list[str] = []

    async def review_plan(self, ctx: EpisodeContext, calls: list[ToolCall]) -> str | None:
        self.plans.append([call.name for call in calls])
        return "search for the deal first" if len(self.plans) == 1 else None

    async def after_refusal(self, ctx: EpisodeContext, step: StepTrace) -> str | None:
        self.refused.append(step)
        return f"the stage is case-sensitive (refused: {step.error and step.error['code']})"

    async def review_reply(self, ctx: EpisodeContext, reply: str) -> str | None:
        self.replies.append(reply)
        return "you did not set the probability" if len(self.replies) == 1 else None


@pytest.fixture
async def crm(run_services: RunServices) -> AsyncIterator[CrmApiClient]:
    client = CrmApiClient(run_services.crm_api_url, ADMIN_KEY)
    yield client
    await client.aclose()


def call(call_id: str, name: str, **arguments: object) -> Message:
    return Message.assistant(tool_calls=[ToolCall(id=call_id, name=name, arguments=arguments)])


async def test_held_plans_refusals_and_retries_reach_the_model_in_order(
    run_services: RunServices, crm: CrmApiClient
) -> None:
    case = run_services.cases[CASE]
    tools = [
        ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters)
        for tool in await crm.tools()
    ]
    provider = ScriptedProvider(
        [
            call("c1", "modify_opportunity", opportunity_id="x", updates={"stage": "proposal"}),
            call("c2", "modify_opportunity", opportunity_id="nope", updates={"stage": "proposal"}),
            "Done: moved to Proposal.",
            "Done: moved to Proposal at 60%.",
        ]
    )
    agent = LLMAgent("student", provider, "scripted", SystemPrompt("Act. $guidance"))
    episode = await crm.open_episode(CASE)
    supervisor = RecordingSupervisor()
    ctx = EpisodeContext(
        session_id="sup/1",
        case=case,
        trial=0,
        tools=tools,
        crm=crm,
        token=episode.token,
        limits=EpisodeLimits(10, 100_000),
        supervisor=supervisor,
    )
    try:
        result = await agent.run(ctx)
    finally:
        await crm.close_episode(episode.episode_id)

    assert result.final_reply == "Done: moved to Proposal at 60%."
    # The held call was not made; the second one was, and was refused.
    assert [step.tool_call_id for step in ctx.steps] == ["sup/1#1"]
    assert not ctx.steps[0].ok and supervisor.refused == ctx.steps
    assert ctx.steps[0].arguments["opportunity_id"] == "nope"

    second, third, fourth = provider.calls[1], provider.calls[2], provider.calls[3]
    held = second.messages[-2:]
    assert held[0].role == "tool" and held[0].tool_call_id == "c1"
    ok, body = parse_tool_result(held[0].content)
    assert not ok and body["code"] == SUPERVISOR_HOLD and "search for the deal" in body["message"]
    assert held[1].role == "system" and "search for the deal first" in held[1].content
    after_refusal = third.messages[-2:]
    assert after_refusal[0].role == "tool" and after_refusal[0].tool_call_id == "c2"
    assert after_refusal[1].role == "system" and "case-sensitive" in after_refusal[1].content
    assert [m.role for m in fourth.messages[-3:]] == ["assistant", "system", "user"]
    assert "probability" in fourth.messages[-2].content
    assert fourth.messages[-1].content == RETRY_REQUEST
    assert supervisor.replies == ["Done: moved to Proposal."]


async def test_a_tool_subset_widens_when_the_model_asks_outside_it(
    run_services: RunServices, crm: CrmApiClient
) -> None:
    case = run_services.cases[CASE]
    tools = [
        ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters)
        for tool in await crm.tools()
    ]
    subset = [tool for tool in tools if tool.name == "opportunity_search"]
    provider = ScriptedProvider(
        [
            call("c1", "opportunity_search", criteria={"name": "Zephyr"}),
            call("c2", "client_search", criteria={"name": "Zephyr"}),
            "Found it.",
        ]
    )
    agent = LLMAgent("student", provider, "scripted", SystemPrompt("Act."))
    episode = await crm.open_episode(CASE)
    ctx = EpisodeContext(
        session_id="sub/1",
        case=case,
        trial=0,
        tools=tools,
        crm=crm,
        token=episode.token,
        limits=EpisodeLimits(10, 100_000),
        tool_subset=subset,
    )
    try:
        await agent.run(ctx)
    finally:
        await crm.close_episode(episode.episode_id)
    offered = [[tool.name for tool in c.tools] for c in provider.calls]
    assert offered[0] == ["opportunity_search"] and offered[1] == ["opportunity_search"]
    # client_search was outside the subset: it was made, and every tool offered after.
    assert [step.tool for step in ctx.steps] == ["opportunity_search", "client_search"]
    assert offered[2] == [tool.name for tool in tools]
    assert ctx.tool_subset is None
