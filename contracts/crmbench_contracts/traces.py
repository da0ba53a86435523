"""Telemetry of one episode: a session trace and its step traces (see design/learning.md).

The runner writes these to JSONL (one `{"type": "session", ...}` line followed by its
`{"type": "step", ...}` lines, all in one append) and to Postgres. `crmbench export
--format atlas` maps them onto the Atlas SDK's session/step trace field names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from crmbench_contracts.rewards import RewardRecord, VerificationMode

# The mode names traces used before `VerificationMode`; older traces still load.
LEGACY_VERIFICATION_MODES = {
    "structured": VerificationMode.OFFLINE,
    "structured+judges": VerificationMode.JUDGES,
}

EpisodeOutcome = Literal[
    "completed",  # the agent ended with a reply
    "step_limit",  # it hit the step limit before replying
    "token_budget",  # it ran out of tokens before replying
    "agent_error",  # the model call failed for good (retries exhausted, bad response)
    "harness_error",  # the CRM API or the verifier failed; the episode is not the agent's fault
]
Audience = Literal["student", "teacher"]


class TokenUsage(BaseModel):
    """Tokens and cost of a set of LLM calls."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float | None = 0.0
    """None when some call's model has no price in the price table."""

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int,
        cost_usd: float | None,
    ) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cached_input_tokens += cached_input_tokens
        if self.cost_usd is None or cost_usd is None:
            self.cost_usd = None
        else:
            self.cost_usd += cost_usd


def new_usage() -> dict[Audience, TokenUsage]:
    """Empty token accounts for both audiences."""
    return {"student": TokenUsage(), "teacher": TokenUsage()}


class StateChange(BaseModel):
    """One row a tool call changed, from the CRM API's change log."""

    table: str
    op: str
    key: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class StepTrace(BaseModel):
    """One tool call of an episode."""

    type: Literal["step"] = "step"
    session_id: str
    step_id: int = Field(ge=1, description="1-based position in the episode.")
    tool_call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    status: int = Field(description="HTTP status of the tool call; 0 when it never got one.")
    ok: bool
    result: Any = None
    """The tool's response body on success."""
    error: dict[str, Any] | None = None
    """The refusal on failure: code, field, message (as the CRM API returned it)."""
    latency_ms: float = Field(description="Wall time of the tool's HTTP call.")
    llm_latency_ms: float = 0.0
    """Wall time of the model call that asked for this tool call (shared by a turn's calls)."""
    tokens: TokenUsage = Field(default_factory=TokenUsage)
    """Tokens of the model call that asked for it (counted on a turn's first call only)."""
    actor: Audience = "student"
    guidance: list[str] = Field(default_factory=list)
    reward: float | None = None
    """The episode's reward, repeated on each step (steps have no reward of their own yet)."""
    state_change: list[StateChange] = Field(default_factory=list)
    started_at: datetime


Lane = Literal["auto", "paired", "coach", "escalate"]
"""Supervision lanes (design/learning.md): `auto` the student acts alone; `paired` the
teacher reviews the outcome and may order one retry; `coach` the teacher reviews the plan
before any write and each failed call; `escalate` the teacher takes over."""
DecisionSource = Literal["rule", "teacher"]
"""Who picked a lane: a rule on the memory's track record, or the teacher's probe."""
LearningMode = Literal["off", "frozen", "on"]
"""The run config's `learning.mode`: `off` no learning loop; `frozen` retrieval and
injection from the playbook memory only (no synthesis, teacher guidance or retirement);
`on` the whole loop."""
CueMatch = Literal["semantic", "pattern", "both", "shuffled"]
"""How a playbook entry's cue matched the task: embedding similarity above the threshold,
an exact cue pattern, or both; `shuffled` marks an entry the shuffled-guidance control drew
at random from the memory (its cue was not matched)."""


class PlaybookRetrieval(BaseModel):
    """One playbook entry retrieved for an episode (before the agent acts)."""

    entry_id: str
    similarity: float | None = None
    """Cosine similarity of the task to the entry's cue; None for a pattern-only match."""
    cue_match: CueMatch
    injected: bool = False
    """Whether the entry made it into a system prompt (only the top entries do)."""
    audience: Audience = "student"
    """Whose prompt the entry is written for."""
    level: Literal["task", "domain", "workflow", "universal"] | None = None
    """The entry's abstraction level (None in traces from before it was recorded)."""
    observable: bool = True
    """Whether a trace can show the entry followed (its action names a tool or an argument
    rule); universal entries without either are not, and the adoption rate leaves them
    out."""


class LaneDecision(BaseModel):
    """A supervision lane picked for an episode, and why."""

    lane: Lane
    reason: str
    confidence: float | None = Field(default=None, ge=0, le=1)
    """The probe's confidence in the lane; None when a rule decided without one."""
    source: DecisionSource


class SupervisionTransition(BaseModel):
    """A lane decision taking effect in an episode: the triage's (from no lane, at step 0)
    or a later change of lane after a step."""

    step: int = Field(ge=0)
    """The step after which it took effect; 0 is before the first tool call."""
    from_lane: Lane | None = None
    """None for the episode's first lane."""
    to_lane: Lane
    reason: str
    confidence: float | None = Field(default=None, ge=0, le=1)
    source: DecisionSource
    guidance: list[str] = Field(default_factory=list)
    """Guidance the teacher gave with the change, as the agent received it."""

    @classmethod
    def of(
        cls, decision: LaneDecision, *, step: int = 0, from_lane: Lane | None = None
    ) -> SupervisionTransition:
        """The transition a lane decision makes at `step` (the first lane by default)."""
        return cls(
            step=step,
            from_lane=from_lane,
            to_lane=decision.lane,
            reason=decision.reason,
            confidence=decision.confidence,
            source=decision.source,
        )


class CrmContext(BaseModel):
    """What the learning loop and the reports need to know about the case of a session."""

    case_id: str
    task_category: str
    workflow: str
    difficulty: str
    split: str
    failure_category: str | None = None
    failure_family: str | None = None
    verification_mode: VerificationMode | None = None
    """The reward record's `verification_mode` (how the reply was read); None when the
    episode was not verified (a harness error). Older traces' `structured` reads as
    `offline`, `structured+judges` as `judges`."""
    learning_mode: LearningMode | None = None
    """The learning mode whose retrieval ran before the agent acted (`frozen`, `on`); None
    when none ran (learning off, or the episode ended before it). The episodes that have
    one are the cue hit rate's denominator."""
    playbooks_retrieved: list[PlaybookRetrieval] = Field(default_factory=list)
    """The playbook entries retrieved for the episode, injected or not."""
    injected_digest: str | None = None
    """SHA-256 (hex) of the playbook guidance text injected into the agent's system prompt;
    None when nothing was injected."""
    injected_guidance: str | None = None
    """The injected playbook guidance text itself (its digest is `injected_digest`)."""
    playbooks_adopted: list[str] = Field(default_factory=list)
    """Ids of the injected entries whose prescribed action the trace shows."""
    lane: LaneDecision | None = None
    """The triage's lane decision (reason, confidence, rule or teacher); None without
    triage (learning off or frozen)."""
    supervision_transitions: list[SupervisionTransition] = Field(default_factory=list)
    """The lane the episode started in (triage) and every change of lane after it."""
    trajectory: list[dict[str, Any]] = Field(default_factory=list)
    """The supervision's trajectory events (guidance with its step and teacher call id,
    teacher calls without a usable answer), as written to `runner.trajectory_event`."""
    baseline_score: float | None = None

    @field_validator("verification_mode", mode="before")
    @classmethod
    def _legacy_mode(cls, value: Any) -> Any:
        return LEGACY_VERIFICATION_MODES.get(value, value) if isinstance(value, str) else value


class SessionTrace(BaseModel):
    """One episode of a run: the task, what the agent did, what it cost and its reward."""

    type: Literal["session"] = "session"
    session_id: str
    """`{run_id}/{case_id}/{trial}`: one per (case, trial) of a run."""
    run_id: str
    case_id: str
    trial: int = Field(ge=0)
    agent: str
    model: str | None = None
    episode_id: str | None = None
    task: str
    """The user's turns, joined with blank lines."""
    final_answer: str = ""
    outcome: EpisodeOutcome
    error: str | None = None
    """Why an episode ended in `agent_error` or `harness_error`."""
    steps: int = 0
    score: float = Field(default=0.0, ge=0, le=1)
    passed: bool = False
    verdicts: dict[str, bool] = Field(default_factory=dict)
    reward: RewardRecord | None = None
    token_usage: dict[Audience, TokenUsage] = Field(default_factory=lambda: new_usage())
    crm_context: CrmContext
    started_at: datetime
    ended_at: datetime
    wall_ms: float
    agent_ms: float
    """Time spent waiting on the agent's model calls (the part the harness does not own)."""
    worker: str = ""
    """Which runner process ran it (host:pid)."""

    @property
    def total_tokens(self) -> int:
        return sum(usage.total_tokens for usage in self.token_usage.values())

    @property
    def cost_usd(self) -> float | None:
        costs = [usage.cost_usd for usage in self.token_usage.values()]
        if any(cost is None for cost in costs):
            return None
        return sum(cost for cost in costs if cost is not None)
