"""Hook points of an episode for the learning loop (design/learning.md): before the agent
acts (retrieve and inject playbooks, triage), after it acts (review), after the reward
(adoption, synthesis, bookkeeping). `NoHooks` does nothing at each of them (a run without learning
passes none); `agent_runner.learning.retrieval.RetrievalHooks` is the frozen mode.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from agent_runner.agents.base import Agent, AgentResult, EpisodeContext
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.traces import (
    LaneDecision,
    LearningMode,
    PlaybookRetrieval,
    SupervisionTransition,
)


@dataclass(frozen=True)
class Guidance:
    """What `before_act` hands the episode: text for the agent's system prompt and the
    record of how it was chosen."""

    text: str = ""
    """Goes into the `$guidance` slot of the agent's system prompt (after any guidance the
    agent was built with); empty adds nothing."""
    retrievals: list[PlaybookRetrieval] = field(default_factory=list)
    """Recorded in the session's `crm_context.playbooks_retrieved`."""
    lane: LaneDecision | None = None
    """The triage's lane, recorded as the session's first supervision transition."""
    digest: str | None = None
    """SHA-256 of the injected playbook text, recorded as `crm_context.injected_digest`."""
    learning_mode: LearningMode | None = None
    """The learning mode that retrieved for the episode (`crm_context.learning_mode`)."""
    acting_agent: Agent | None = None
    """Plays the episode instead of the run's agent (the `escalate` lane: the teacher
    acts); None lets the run's agent play."""


@dataclass(frozen=True)
class ActReview:
    """What `after_act` found in the finished trajectory, for the session trace."""

    adopted: list[str] = field(default_factory=list)
    """Ids of the injected playbook entries whose prescribed action the steps show,
    recorded in the session's `crm_context.playbooks_adopted`."""
    transitions: list[SupervisionTransition] = field(default_factory=list)
    """Supervision transitions after the first lane (a retry the teacher ordered)."""
    events: list[dict[str, Any]] = field(default_factory=list)
    """Trajectory event payloads of the episode's supervision (guidance, failed teacher
    calls), recorded in `crm_context.trajectory` as well as in Postgres."""


class EpisodeHooks(Protocol):
    """Called by `EpisodeRunner.play` in this order, once each per episode.

    Every hook gets the live `EpisodeContext` (the case, the session id, the steps so far,
    token accounts a teacher's calls can be charged to with `record_completion`). An
    exception from `before_act` or `after_act` ends the episode as a `harness_error`
    (wrapped in `HookFailed`, so a teacher's provider error is never taken for the agent's
    own provider failing, which would replay the episode or stop the run). An exception
    from `after_reward` keeps the episode's outcome and reward and is recorded in the
    session's `error`. `after_act` and `after_reward` are skipped when the episode fails
    before reaching them (the CRM API or the verifier unreachable).
    """

    async def before_act(self, ctx: EpisodeContext) -> Guidance | None:
        """Before the agent's first model call; None leaves the prompt as it is."""
        ...

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> ActReview | None:
        """After the agent's final reply (or its limit), before the verifier scores it;
        None records no adoption."""
        ...

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        """After scoring and the CRM episode's close: the steps carry their state change
        and the episode's reward; the session trace is built after this returns."""
        ...


T = TypeVar("T")


class HookFailed(Exception):
    """A learning-loop hook raised; `hook` names it ("before_act", ...)."""

    def __init__(self, hook: str, cause: BaseException) -> None:
        super().__init__(f"the {hook} hook failed: {type(cause).__name__}: {cause}")
        self.hook = hook


async def run_hook(hook: str, call: Awaitable[T]) -> T:
    """Awaits one hook call; any exception comes out as `HookFailed(hook, exc)`."""
    try:
        return await call
    except Exception as exc:
        raise HookFailed(hook, exc) from exc


class NoHooks:
    """The hooks of a run without the learning loop: nothing happens at any of them."""

    async def before_act(self, ctx: EpisodeContext) -> Guidance | None:
        return None

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> ActReview | None:
        return None

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        return None
