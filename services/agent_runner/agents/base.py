"""What every agent gets for one episode, and what it gives back.

An agent sees the case's user turns, the tool schemas and one way to act on the CRM:
`EpisodeContext.call_tool`, which calls the tool over HTTP with the episode's token and
records the step (tool, arguments, result or error, latency, tokens). It ends with a
reply. Step limit and token budget are enforced here, so every agent obeys the same ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from crmbench_clients.crm_api import CrmApiClient, ToolOutcome
from crmbench_contracts.cases import Case
from crmbench_contracts.traces import Audience, EpisodeOutcome, StepTrace, TokenUsage
from crmbench_llm.types import Completion, ToolCall, ToolSpec


class EpisodeLimitReached(Exception):
    """The episode used up its steps or its token budget; the agent must stop."""

    def __init__(self, outcome: EpisodeOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome: EpisodeOutcome = outcome


@dataclass
class EpisodeLimits:
    max_steps: int
    """Tool calls allowed in one episode."""
    max_tokens: int
    """Input plus output tokens allowed over the episode's model calls."""


class Supervisor(Protocol):
    """The teacher's hand in a running episode (the learning loop's `paired` and `coach`
    lanes, design/learning.md). An LLM agent asks it at three points; each returns
    guidance text for the agent (a system message) or None to go on unsupervised."""

    async def review_plan(self, ctx: EpisodeContext, calls: list[ToolCall]) -> str | None:
        """Before the tool calls of a turn are made. Guidance holds every call of the
        turn (none is made; each is answered `SUPERVISOR_HOLD` with the guidance)."""
        ...

    async def after_refusal(self, ctx: EpisodeContext, step: StepTrace) -> str | None:
        """After a tool call the CRM refused (`step`, already recorded)."""
        ...

    async def review_reply(self, ctx: EpisodeContext, reply: str) -> str | None:
        """After the agent's final reply. Guidance orders a retry: the agent gets it and
        a user turn asking it to finish the task, and its next reply is final."""
        ...


@dataclass
class EpisodeContext:
    """One live episode of one case, as an agent sees it."""

    session_id: str
    case: Case
    trial: int
    tools: list[ToolSpec]
    crm: CrmApiClient
    token: str
    limits: EpisodeLimits
    seed: int = 0
    guidance: str = ""
    """Guidance for this episode's system prompt (the learning loop's injected playbook
    entries, set by `EpisodeHooks.before_act`); LLM agents add it to their own guidance,
    agents without a prompt ignore it."""
    supervisor: Supervisor | None = None
    """The learning loop's supervisor of this episode (None: the agent acts alone)."""
    tool_subset: list[ToolSpec] | None = None
    """Tools offered first (the learning loop's tool subsetting); None offers `tools`.
    An agent that asks for a tool outside the subset gets the whole list from then on."""
    steps: list[StepTrace] = field(default_factory=list)
    usage: dict[Audience, TokenUsage] = field(
        default_factory=lambda: {"student": TokenUsage(), "teacher": TokenUsage()}
    )
    agent_ms: float = 0.0
    """Wall time of model calls; the rest of an episode's time is the harness's."""
    transcript: list[dict[str, Any]] = field(default_factory=list)
    _pending_llm: tuple[float, TokenUsage] | None = None

    @property
    def user_turns(self) -> list[str]:
        return [turn.content for turn in self.case.turns]

    @property
    def tokens_used(self) -> int:
        return sum(usage.total_tokens for usage in self.usage.values())

    def record_completion(self, completion: Completion, audience: Audience = "student") -> None:
        """Accounts one model call; raises EpisodeLimitReached past the token budget."""
        u = completion.usage
        self.usage[audience].add(
            u.input_tokens, u.output_tokens, u.cached_input_tokens, completion.cost_usd
        )
        self.agent_ms += completion.latency_ms
        step_usage = TokenUsage()
        step_usage.add(u.input_tokens, u.output_tokens, u.cached_input_tokens, completion.cost_usd)
        self._pending_llm = (completion.latency_ms, step_usage)
        if self.tokens_used > self.limits.max_tokens:
            raise EpisodeLimitReached(
                "token_budget",
                f"used {self.tokens_used} tokens, over the budget of {self.limits.max_tokens}",
            )

    def record_usage(
        self,
        audience: Audience,
        *,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cost_usd: float | None = 0.0,
        latency_ms: float = 0.0,
    ) -> None:
        """Accounts a model call that is not one of the agent's turns (a teacher's review):
        its tokens and cost go to `audience`, its latency to `agent_ms`. Never raises: a
        teacher's tokens do not end the student's episode."""
        self.usage[audience].add(input_tokens, output_tokens, cached_input_tokens, cost_usd)
        self.agent_ms += latency_ms

    def _next_step(self) -> tuple[int, str]:
        """The next step's id and tool-call id; raises EpisodeLimitReached when the step
        limit is already used up."""
        if len(self.steps) >= self.limits.max_steps:
            raise EpisodeLimitReached(
                "step_limit", f"the step limit of {self.limits.max_steps} tool calls is used up"
            )
        step_id = len(self.steps) + 1
        return step_id, f"{self.session_id}#{step_id}"[-128:]

    def _record_step(
        self,
        step_id: int,
        tool_call_id: str,
        name: str,
        arguments: dict[str, Any],
        outcome: ToolOutcome,
        *,
        actor: Audience,
        started_at: datetime,
    ) -> None:
        llm_latency, tokens = self._pending_llm or (0.0, TokenUsage())
        # A turn's model call is charged to its first tool call only.
        self._pending_llm = None
        self.steps.append(
            StepTrace(
                session_id=self.session_id,
                step_id=step_id,
                tool_call_id=tool_call_id,
                tool=name,
                arguments=arguments,
                status=outcome.status,
                ok=outcome.ok,
                result=outcome.body if outcome.ok else None,
                error=outcome.error,
                latency_ms=round(outcome.latency_ms, 3),
                llm_latency_ms=round(llm_latency, 3),
                tokens=tokens,
                actor=actor,
                started_at=started_at,
            )
        )

    async def call_tool(
        self, name: str, arguments: dict[str, Any], *, actor: Audience = "student"
    ) -> ToolOutcome:
        """Calls a tool in this episode and records the step.

        Raises EpisodeLimitReached when the step limit is already used up.
        """
        step_id, tool_call_id = self._next_step()
        started_at = datetime.now(UTC)
        outcome = await self.crm.call_tool(self.token, name, arguments, tool_call_id=tool_call_id)
        self._record_step(
            step_id, tool_call_id, name, arguments, outcome, actor=actor, started_at=started_at
        )
        return outcome

    def refuse_call(
        self, name: str, reason: str, *, raw_arguments: str | None, actor: Audience = "student"
    ) -> ToolOutcome:
        """A tool call the model asked for that cannot be made as given (no tool named,
        arguments that are not a JSON object): the answer an API would give (status 400,
        `INVALID_REQUEST`, the field at fault, `reason`), recorded as a step (no CRM
        call, latency 0; the step's error also keeps the raw arguments, cut at 2,000
        characters) so the trace shows every call the model made. It counts toward the
        step limit: raises EpisodeLimitReached when that is already used up."""
        step_id, tool_call_id = self._next_step()
        error: dict[str, Any] = {
            "code": "INVALID_REQUEST",
            "field": "arguments" if name else "name",
            "message": reason,
        }
        answer = ToolOutcome(status=400, body={"error": error}, latency_ms=0.0)
        if raw_arguments is not None:
            error = {**error, "raw_arguments": raw_arguments[:2000]}
        recorded = ToolOutcome(status=400, body={"error": error}, latency_ms=0.0)
        self._record_step(
            step_id, tool_call_id, name, {}, recorded, actor=actor, started_at=datetime.now(UTC)
        )
        return answer


@dataclass
class AgentResult:
    final_reply: str
    outcome: EpisodeOutcome = "completed"
    error: str | None = None


class Agent(Protocol):
    """Drives one episode to a final reply."""

    name: str
    model: str | None

    async def run(self, ctx: EpisodeContext) -> AgentResult: ...

    async def aclose(self) -> None:
        """Releases the agent's connections (its model client) at the end of a run."""
        ...


def monotonic_ms() -> float:
    return time.perf_counter() * 1000
