"""The teacher's interface to the learning loop (design/learning.md, steps 2 and 4).

A `Teacher` answers the five calls of `crmbench_contracts.teaching` (triage, plan review,
step guidance, outcome review, synthesis) from a `TeacherView`, each as a `TeacherReply`
whose answer is None (with the error) when the teacher failed or did not answer in the
expected shape: the loop then carries on as if it had said nothing, so a teacher's bad
answer never crashes an episode. Two implementations:

- `agent_runner.learning.llm_teacher.LLMTeacher`: a model on the provider interface
  (Anthropic by default, OpenAI as an option), prompts in `config/prompts/teacher_*.md`;
- `agent_runner.learning.simulated_teacher.SimulatedTeacher`: a seeded offline stand-in
  for tests and offline runs, which reads only the view.

`teacher_view(ctx, ...)` builds the view from a live episode; it copies the user's turns,
the category and the steps, never the case's expected state, reference actions or reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agent_runner.agents.base import EpisodeContext
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.teaching import (
    Advice,
    OutcomeReview,
    PlannedCall,
    StepView,
    SynthesisAnswer,
    TeacherReply,
    TeacherView,
    TriageAnswer,
)
from crmbench_contracts.traces import Lane, StepTrace


class Teacher(Protocol):
    """Supervises the student and distils lessons. Every method returns a reply (never
    raises for a bad answer or a provider outage; it may raise `LLMError` with fault
    `setup` when its key or model is refused, which stops the run)."""

    name: str
    model: str | None

    async def triage(self, view: TeacherView) -> TeacherReply[TriageAnswer]: ...

    async def review_plan(self, view: TeacherView) -> TeacherReply[Advice]:
        """Coach lane, before the first write: `view.planned` holds the calls asked for."""
        ...

    async def guide_step(self, view: TeacherView) -> TeacherReply[Advice]:
        """Coach lane, after a refused call (the last step of `view.steps`)."""
        ...

    async def review_outcome(self, view: TeacherView) -> TeacherReply[OutcomeReview]:
        """Paired lane, after the final reply (`view.final_reply`)."""
        ...

    async def synthesize(self, view: TeacherView) -> TeacherReply[SynthesisAnswer]:
        """After the reward (`view.reward`): candidate playbook entries."""
        ...

    async def aclose(self) -> None: ...


def step_view(step: StepTrace) -> StepView:
    """A step as the teacher sees it: the call and, when refused, the API's error."""
    error = step.error or {}
    return StepView(
        step=step.step_id,
        tool=step.tool,
        arguments=dict(step.arguments),
        status=step.status,
        ok=step.ok,
        error_code=_text(error.get("code")),
        error_message=_text(error.get("message")),
        error_field=_text(error.get("field")),
        actor=step.actor,
    )


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def teacher_view(
    ctx: EpisodeContext,
    *,
    lane: Lane | None = None,
    playbook_guidance: str = "",
    planned: Sequence[PlannedCall] = (),
    final_reply: str | None = None,
    guidance_given: Sequence[str] = (),
    reward: RewardRecord | None = None,
) -> TeacherView:
    """The view of the live episode `ctx` (its steps so far). Shapes: lists are copied."""
    case = ctx.case
    return TeacherView(
        session_id=ctx.session_id,
        task_category=case.task_category,
        workflow=case.workflow,
        user_turns=list(ctx.user_turns),
        today=case.today.isoformat(),
        steps=[step_view(step) for step in ctx.steps],
        planned=list(planned),
        final_reply=final_reply,
        lane=lane,
        playbook_guidance=playbook_guidance,
        guidance_given=list(guidance_given),
        reward=reward,
    )
