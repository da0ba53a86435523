"""What the teacher sees and what it answers (design/learning.md, steps 2 and 4).

The teacher supervises the student through five calls, each with its prompt in
`config/prompts/teacher_*.md` and each answer parsed into one of the typed models here:

| call | when | answer |
|---|---|---|
| triage | before the episode (when the probe is the teacher) | `TriageAnswer` |
| plan_review | coach lane: before the student's first write is made | `Advice` |
| step_guidance | coach lane: after each refused tool call | `Advice` |
| outcome_review | paired lane: after the student's final reply | `OutcomeReview` |
| synthesis | after the reward (learning mode `on`) | `SynthesisAnswer` |

`TeacherView` is everything a teacher is given about an episode: the user's turns, the
task category, the steps so far (tool, arguments, status, refusal), the reply, the
playbook guidance injected for the teacher and, for synthesis only, the verifier's reward
record (score, failed checks with their rationale, claimed outcome). It never holds the
case's expected state, reference actions or reference reply: a teacher (real or
simulated) that could read them would teach the answer, not the lesson.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from crmbench_contracts.playbooks import PlaybookContent
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.traces import Lane

TeacherCall = Literal["triage", "plan_review", "step_guidance", "outcome_review", "synthesis"]
TEACHER_CALLS: tuple[TeacherCall, ...] = (
    "triage",
    "plan_review",
    "step_guidance",
    "outcome_review",
    "synthesis",
)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class StepView(BaseModel):
    """One tool call of the episode as the teacher sees it."""

    step: int = Field(ge=1)
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    status: int
    ok: bool
    error_code: str | None = None
    error_message: str | None = None
    error_field: str | None = None
    actor: Literal["student", "teacher"] = "student"


class PlannedCall(BaseModel):
    """A tool call the student asked for and that has not been made yet (plan review)."""

    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class TeacherView(BaseModel):
    """What the teacher is told about one episode (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    task_category: str
    workflow: str
    user_turns: list[str]
    today: str
    """The episode's date (ISO), as the student's prompt gives it."""
    steps: list[StepView] = Field(default_factory=list)
    planned: list[PlannedCall] = Field(default_factory=list)
    """The calls awaiting plan review (empty for the other calls)."""
    final_reply: str | None = None
    lane: Lane | None = None
    playbook_guidance: str = ""
    """The playbook entries injected for the teacher's audience (rendered text)."""
    guidance_given: list[str] = Field(default_factory=list)
    """Guidance the teacher already gave in this episode, in order."""
    reward: RewardRecord | None = None
    """The verifier's record; given to synthesis only (after the episode)."""

    @property
    def refused_steps(self) -> list[StepView]:
        return [step for step in self.steps if not step.ok]


class TriageAnswer(_Answer):
    lane: Lane
    reason: str = Field(min_length=1)
    confidence: float = Field(ge=0, le=1)


class Advice(_Answer):
    """Plan review or step guidance: `guidance` empty means "go on as planned"."""

    guidance: str = ""
    reason: str = ""


class OutcomeReview(_Answer):
    """The paired lane's review of the student's finished episode."""

    retry: bool
    guidance: str = ""
    """What to do differently on the retry; required when `retry`."""
    reason: str = ""


class SynthesisAnswer(_Answer):
    """Candidate playbook entries (before the gates)."""

    candidates: list[PlaybookContent] = Field(default_factory=list)


A = TypeVar("A", bound=BaseModel)


class TeacherReply(BaseModel, Generic[A]):
    """One teacher call: its parsed answer, or the reason it has none.

    `answer` is None exactly when `error` says why (the provider failed, or its text did
    not parse into the call's model); the loop then goes on as if the teacher had said
    nothing, and records the error in the session's trajectory."""

    call_id: str
    call: TeacherCall
    answer: A | None = None
    error: str | None = None
    raw_text: str = ""
    """The teacher's text as it came back (kept for the audit when it did not parse)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float | None = 0.0
    latency_ms: float = 0.0
