"""The tool loop of an LLM agent (student or teacher-only baseline).

Each user turn goes to the model with the CRM tools offered; every tool call the model
asks for is made over HTTP and its result (or refusal) goes back as a tool message, until
the model answers without tool calls. The next user turn follows that answer; the last
answer is the episode's final reply.

A failed model call ends the episode as the model's failure (`agent_error`, scored) only
when the fault is the model's (`LLMError.fault == "model"`); a refused key, a missing
model or a provider outage is raised for the runner to handle, never scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from string import Template

from agent_runner.agents.base import AgentResult, EpisodeContext, EpisodeLimitReached
from agent_runner.protocol import CASE_HEADER, TRIAL_HEADER, tool_result_content
from crmbench_contracts.traces import Audience
from crmbench_llm import LLMError, LLMProvider, Message, ToolCall
from crmbench_llm.types import ToolSpec

SUPERVISOR_HOLD = "SUPERVISOR_HOLD"
"""The error code a tool call gets when the supervisor held the turn's calls for review
(the call was not made)."""
RETRY_REQUEST = (
    "Your supervisor reviewed your work (see its guidance). Fix what it points out, make "
    "any change that is still missing, and then give your final answer again."
)
"""The user turn that follows the supervisor's retry guidance (paired lane)."""


def supervisor_message(guidance: str) -> Message:
    """Guidance as the agent receives it: a system message (providers without system
    turns in a conversation, such as Anthropic, join it to the system prompt)."""
    return Message.system(f"Guidance from your supervisor: {guidance.strip()}")


def malformed_call(call: ToolCall) -> str | None:
    """Why the model's tool call cannot be made as given, or None when it can."""
    if not call.name:
        return "the tool call names no tool"
    if call.raw_arguments is not None:
        return "the tool arguments must be a JSON object"
    return None


class SystemPrompt:
    """The system prompt template (config/prompts/*.md), filled per case.

    Placeholders: $actor_name, $actor_role, $today, $guidance (empty when none).
    """

    def __init__(self, template: str) -> None:
        self.template = Template(template)

    @classmethod
    def from_file(cls, path: Path) -> SystemPrompt:
        return cls(path.read_text(encoding="utf-8"))

    def render(self, ctx: EpisodeContext, guidance: str = "") -> str:
        case = ctx.case
        return self.template.safe_substitute(
            actor_name=case.actor.name,
            actor_role=case.actor.role.replace("_", " "),
            today=case.today.isoformat(),
            guidance=guidance,
        ).strip()


class LLMAgent:
    """One model with the CRM tools."""

    def __init__(
        self,
        name: str,
        provider: LLMProvider,
        model: str,
        prompt: SystemPrompt,
        *,
        audience: Audience = "student",
        send_case_headers: bool = False,
        guidance: str = "",
    ) -> None:
        self.name = name
        self.provider = provider
        self.model: str | None = model
        self.prompt = prompt
        self.audience: Audience = audience
        self.send_case_headers = send_case_headers
        self.guidance = guidance

    def _headers(self, ctx: EpisodeContext) -> Mapping[str, str] | None:
        if not self.send_case_headers:
            return None
        return {CASE_HEADER: ctx.case.case_id, TRIAL_HEADER: str(ctx.trial)}

    async def aclose(self) -> None:
        await self.provider.aclose()

    def _guidance(self, ctx: EpisodeContext) -> str:
        """The agent's own guidance, then the episode's, a blank line apart."""
        return "\n\n".join(text for text in (self.guidance, ctx.guidance) if text)

    async def run(self, ctx: EpisodeContext) -> AgentResult:
        system = self.prompt.render(ctx, self._guidance(ctx))
        messages: list[Message] = []
        reply = ""
        try:
            for turn in ctx.user_turns:
                messages.append(Message.user(turn))
                reply = await self._answer(ctx, system, messages)
            if ctx.supervisor is not None:
                retry = await ctx.supervisor.review_reply(ctx, reply)
                if retry:
                    messages.append(supervisor_message(retry))
                    messages.append(Message.user(RETRY_REQUEST))
                    reply = await self._answer(ctx, system, messages)
        except EpisodeLimitReached as limit:
            return AgentResult(reply, limit.outcome, str(limit))
        except LLMError as error:
            if error.fault != "model":
                raise
            return AgentResult(reply, "agent_error", str(error))
        finally:
            # Reasoning blocks are the provider's opaque state, not what the agent said.
            ctx.transcript = [
                m.model_dump(mode="json", exclude_defaults=True, exclude={"reasoning"})
                for m in messages
            ]
        return AgentResult(reply)

    async def _answer(self, ctx: EpisodeContext, system: str, messages: list[Message]) -> str:
        """Runs the model until it answers without tool calls; returns that answer.

        With a supervisor, the turn's calls are first shown to it (`review_plan`: its
        guidance holds them all), and each refused call is shown to it after it is made
        (`after_refusal`); its guidance follows the turn's tool results as system
        messages. With a tool subset, the model is offered the subset until it asks for
        a tool outside it, then every tool."""
        offered = ctx.tool_subset if ctx.tool_subset is not None else ctx.tools
        while True:
            completion = await self.provider.complete(
                messages, offered, system=system, headers=self._headers(ctx)
            )
            messages.append(completion.message)
            ctx.record_completion(completion, self.audience)
            calls = completion.message.tool_calls
            if not calls:
                return completion.message.content
            if ctx.tool_subset is not None and _outside(calls, ctx.tool_subset):
                # It asked for a tool it was not offered: offer them all from now on.
                ctx.tool_subset = None
                offered = ctx.tools
            hold = await ctx.supervisor.review_plan(ctx, calls) if ctx.supervisor else None
            notes: list[str] = []
            for call in calls:
                refusal = malformed_call(call)
                if hold:
                    content = tool_result_content(
                        409,
                        {
                            "error": {
                                "code": SUPERVISOR_HOLD,
                                "message": "Not made: your supervisor reviewed the plan "
                                "first. " + hold.strip(),
                            }
                        },
                    )
                elif refusal is not None:
                    # The model's call cannot be made: tell it, as an API would.
                    answer = ctx.refuse_call(
                        call.name, refusal, raw_arguments=call.raw_arguments, actor=self.audience
                    )
                    content = tool_result_content(answer.status, answer.body)
                else:
                    outcome = await ctx.call_tool(call.name, call.arguments, actor=self.audience)
                    content = tool_result_content(outcome.status, outcome.body)
                    if not outcome.ok and ctx.supervisor is not None:
                        note = await ctx.supervisor.after_refusal(ctx, ctx.steps[-1])
                        if note:
                            notes.append(note)
                messages.append(Message.tool(call.id, content))
            # After every tool result of the turn: results must follow their calls.
            messages.extend(supervisor_message(text) for text in ([hold] if hold else notes))


def _outside(calls: list[ToolCall], subset: list[ToolSpec]) -> bool:
    """Whether a call names a tool that is not in `subset`."""
    names = {tool.name for tool in subset}
    return any(call.name and call.name not in names for call in calls)
