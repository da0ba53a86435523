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
        """Runs the model until it answers without tool calls; returns that answer."""
        while True:
            completion = await self.provider.complete(
                messages, ctx.tools, system=system, headers=self._headers(ctx)
            )
            messages.append(completion.message)
            ctx.record_completion(completion, self.audience)
            calls = completion.message.tool_calls
            if not calls:
                return completion.message.content
            for call in calls:
                refusal = malformed_call(call)
                if refusal is not None:
                    # The model's call cannot be made: tell it, as an API would.
                    content = tool_result_content(
                        400, {"error": {"code": "INVALID_REQUEST", "message": refusal}}
                    )
                else:
                    outcome = await ctx.call_tool(call.name, call.arguments, actor=self.audience)
                    content = tool_result_content(outcome.status, outcome.body)
                messages.append(Message.tool(call.id, content))
