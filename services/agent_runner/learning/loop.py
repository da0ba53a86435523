"""The whole learning loop (design/learning.md, `learning.mode: on`): retrieval and
injection (as in frozen mode, `RetrievalHooks`), then triage into a supervision lane,
the teacher's supervision during the episode, and after the reward: bookkeeping, the
task category's track record, synthesis of new playbook entries through the gates, and
retirement of harmful or silent entries.

Per episode:
1. `before_act`: retrieval (student entries into the student's prompt; teacher entries
   into the teacher's views), then the lane: the rule on the task category's track record
   (`triage_rule`) or, with `triage.probe: teacher`, the teacher's answer (the rule when it
   gives none). `coach` and `paired` put a `Supervision` on the episode; `escalate` hands
   the episode to the escalation agent (the teacher acting, its steps recorded as the
   teacher's). The retrieval event and the lane decision are recorded together, once.
2. During the episode (`Supervision`): coach reviews the plan before the first write and
   guides after each refused call; paired reviews the final reply and may order one retry.
   Every guidance message is recorded (step, text, teacher call id) on the step it follows
   and as a `guidance` event; a teacher call without a usable answer as a `teacher_call`
   event.
3. `after_reward`: the outcome's counters and events and the track record, in one
   transaction keyed by the session (once per episode); then synthesis (the teacher's
   candidates, the gates of `agent_runner.learning.synthesis`, `add_or_merge` for each
   accepted one, and a `synthesis` event), in one transaction keyed by the session too;
   then, every `retirement.check_every` episodes, the retirement check.

A resumed run that replays an episode cannot count it twice or store its lessons twice:
both transactions are keyed in `runner.playbook_bookkeeping`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from agent_runner.agents.base import Agent, AgentResult, EpisodeContext
from agent_runner.learning.memory import PlaybookStore
from agent_runner.learning.retrieval import (
    OUTCOME_KEY_SUFFIX,
    PlaybookRetriever,
    Retrieval,
    RetrievalHooks,
    render_guidance,
    task_text,
)
from agent_runner.learning.synthesis import apply_gates, case_values
from agent_runner.learning.teacher import Teacher, teacher_view
from agent_runner.learning.tool_subsets import ToolSubsets
from agent_runner.run.config import LearningSettings, RetirementSettings, TriageSettings
from agent_runner.run.hooks import ActReview, Guidance
from crmbench_contracts.playbooks import (
    EscalationEvent,
    GuidanceEvent,
    LaneDecisionEvent,
    PlaybookCandidate,
    PlaybookCounters,
    PlaybookEntry,
    Provenance,
    SynthesisEvent,
    TeacherCallEvent,
    TrajectoryEvent,
)
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.teaching import PlannedCall, TeacherReply
from crmbench_contracts.traces import (
    Lane,
    LaneDecision,
    LearningMode,
    StepTrace,
    SupervisionTransition,
)
from crmbench_learning.embeddings import Embedder, make_embedder
from crmbench_llm.types import ToolCall

SYNTHESIS_KEY_SUFFIX = "#synthesis"


@dataclass(frozen=True)
class TrackRecord:
    """A task category's record in the memory: the student's episodes and passes."""

    episodes: int = 0
    passes: int = 0

    @property
    def pass_rate(self) -> float | None:
        return self.passes / self.episodes if self.episodes else None


def triage_rule(record: TrackRecord, settings: TriageSettings, category: str) -> LaneDecision:
    """The rule's lane for a category with `record` (see `TriageSettings` for the rule).
    Its confidence is how much evidence backs it, episodes / (episodes + min_episodes)
    (0 with none, 0.5 at min_episodes), not a probability of success."""
    n = record.episodes
    confidence = n / (n + settings.min_episodes) if n + settings.min_episodes else 1.0
    rate = record.pass_rate
    if rate is None or n < settings.min_episodes:
        lane: Lane = "coach"
        why = f"{n} earlier episode(s) of {category}, fewer than {settings.min_episodes}"
    elif rate >= settings.auto_at:
        lane, why = "auto", f"{category} passed {record.passes}/{n} >= {settings.auto_at:.0%}"
    elif rate >= settings.paired_at:
        lane, why = "paired", f"{category} passed {record.passes}/{n} >= {settings.paired_at:.0%}"
    elif n >= settings.escalate_after and rate < settings.escalate_below:
        lane = "escalate"
        why = f"{category} passed {record.passes}/{n} < {settings.escalate_below:.0%}"
    else:
        lane, why = "coach", f"{category} passed {record.passes}/{n} < {settings.paired_at:.0%}"
    return LaneDecision(lane=lane, reason=why, confidence=round(confidence, 4), source="rule")


def harmful(counters: PlaybookCounters, settings: RetirementSettings) -> str | None:
    """Why the entry is harmful, or None: with at least `min_episodes` episodes with it
    and without it, the mean reward with it minus without, plus `z` standard errors of
    that difference (Welch's unpooled standard error), is below zero: reward with it is
    credibly below reward without it."""
    n1, n0 = counters.episodes_with, counters.episodes_without
    if n1 < settings.min_episodes or n0 < settings.min_episodes:
        return None
    m1, m0 = counters.reward_sum_with / n1, counters.reward_sum_without / n0
    v1 = max(counters.reward_sq_sum_with / n1 - m1 * m1, 0.0) * n1 / (n1 - 1)
    v0 = max(counters.reward_sq_sum_without / n0 - m0 * m0, 0.0) * n0 / (n0 - 1)
    se = math.sqrt(v1 / n1 + v0 / n0)
    upper = (m1 - m0) + settings.z * se
    if upper >= 0:
        return None
    return (
        f"mean reward {m1:.3f} with it ({n1} episodes) vs {m0:.3f} without ({n0}); "
        f"the difference's upper bound {upper:+.3f} (z={settings.z}) is below zero"
    )


def _charge(ctx: EpisodeContext, reply: TeacherReply[Any]) -> None:
    ctx.record_usage(
        "teacher",
        input_tokens=reply.input_tokens,
        output_tokens=reply.output_tokens,
        cached_input_tokens=reply.cached_input_tokens,
        cost_usd=reply.cost_usd,
        latency_ms=reply.latency_ms,
    )


@dataclass
class Supervision:
    """The teacher's hand in one episode (`agents.base.Supervisor`), for its lane."""

    hooks: LearningHooks
    lane: Lane
    teacher_guidance: str
    """The teacher-audience playbook text injected for this episode."""
    reviewed_plan: bool = False
    retried: bool = False
    guidance: list[GuidanceEvent] = field(default_factory=list)
    failed_calls: list[TeacherCallEvent] = field(default_factory=list)
    transitions: list[SupervisionTransition] = field(default_factory=list)

    def _view(self, ctx: EpisodeContext, **extra: Any) -> Any:
        return teacher_view(
            ctx,
            lane=self.lane,
            playbook_guidance=self.teacher_guidance,
            guidance_given=[event.text for event in self.guidance],
            **extra,
        )

    def _take(self, ctx: EpisodeContext, reply: TeacherReply[Any], text: str | None) -> str | None:
        """Accounts the call; records its guidance (on the last step, and as an event) or
        its failure; returns the guidance text or None."""
        _charge(ctx, reply)
        if reply.answer is None:
            self.failed_calls.append(
                TeacherCallEvent(
                    call=reply.call,
                    teacher_call_id=reply.call_id,
                    error=reply.error or "no answer",
                    raw_text=reply.raw_text[:2000],
                )
            )
            return None
        if not text or not text.strip():
            return None
        text = text.strip()
        step = len(ctx.steps)
        self.guidance.append(GuidanceEvent(step=step, text=text, teacher_call_id=reply.call_id))
        if ctx.steps:
            ctx.steps[-1].guidance.append(text)
        return text

    async def review_plan(self, ctx: EpisodeContext, calls: list[ToolCall]) -> str | None:
        if self.lane != "coach" or self.reviewed_plan:
            return None
        if not any(call.name in self.hooks.write_tools for call in calls):
            return None
        self.reviewed_plan = True
        planned = [PlannedCall(tool=call.name, arguments=dict(call.arguments)) for call in calls]
        reply = await self.hooks.teacher.review_plan(self._view(ctx, planned=planned))
        return self._take(ctx, reply, reply.answer.guidance if reply.answer else None)

    async def after_refusal(self, ctx: EpisodeContext, step: StepTrace) -> str | None:
        if self.lane != "coach":
            return None
        reply = await self.hooks.teacher.guide_step(self._view(ctx))
        return self._take(ctx, reply, reply.answer.guidance if reply.answer else None)

    async def review_reply(self, ctx: EpisodeContext, reply_text: str) -> str | None:
        if self.lane != "paired" or self.retried:
            return None
        reply = await self.hooks.teacher.review_outcome(self._view(ctx, final_reply=reply_text))
        answer = reply.answer
        text = self._take(ctx, reply, answer.guidance if answer and answer.retry else None)
        if text is not None:
            self.retried = True
            self.transitions.append(
                SupervisionTransition(
                    step=len(ctx.steps),
                    from_lane="paired",
                    to_lane="paired",
                    reason="the teacher ordered a retry: " + (answer.reason if answer else ""),
                    source="teacher",
                    guidance=[text],
                )
            )
        return text


@dataclass
class _Learning:
    """What `LearningHooks` keeps of one episode beyond the retrieval's."""

    lane: LaneDecision
    teacher_entries: list[PlaybookEntry]
    teacher_text: str
    supervision: Supervision | None
    escalated: bool


class LearningHooks(RetrievalHooks):
    """The episode hooks of `learning.mode: on` (see the module docstring)."""

    mode: LearningMode = "on"

    def __init__(
        self,
        retriever: PlaybookRetriever,
        *,
        run_id: str,
        settings: LearningSettings,
        teacher: Teacher,
        write_tools: frozenset[str],
        teacher_retriever: PlaybookRetriever | None = None,
        escalation_agent: Agent | None = None,
        tool_subsets: ToolSubsets | None = None,
    ) -> None:
        super().__init__(
            retriever,
            run_id=run_id,
            control=settings.control,
            explore_rate=settings.explore_rate,
            tool_subsets=tool_subsets,
        )
        self.settings = settings
        self.teacher = teacher
        self.write_tools = write_tools
        self.teacher_retriever = teacher_retriever
        self.escalation_agent = escalation_agent
        self._learning: dict[str, _Learning] = {}
        self._episodes_since_check = 0
        self._retirement_lock = asyncio.Lock()

    @property
    def store(self) -> PlaybookStore:
        return self.retriever.store

    async def track_record(self, category: str) -> TrackRecord:
        row = await self.store.pool.fetchrow(
            "SELECT episodes, passes FROM runner.learning_task_record WHERE task_category = $1",
            category,
        )
        return TrackRecord(row["episodes"], row["passes"]) if row else TrackRecord()

    async def _lane(self, ctx: EpisodeContext, teacher_text: str) -> LaneDecision:
        category = ctx.case.task_category
        rule = triage_rule(await self.track_record(category), self.settings.triage, category)
        if self.settings.triage.probe == "rule":
            return rule
        reply = await self.teacher.triage(teacher_view(ctx, playbook_guidance=teacher_text))
        _charge(ctx, reply)
        if reply.answer is None:
            return rule.model_copy(
                update={
                    "reason": f"the teacher's probe gave no answer ({reply.error}); " + rule.reason
                }
            )
        return LaneDecision(
            lane=reply.answer.lane,
            reason=reply.answer.reason,
            confidence=reply.answer.confidence,
            source="teacher",
        )

    async def before_act(self, ctx: EpisodeContext) -> Guidance:
        teacher_retrieval: Retrieval | None = None
        if self.teacher_retriever is not None:
            # The student's retrieval (in super().before_act) reuses this embedding.
            vector = await self.task_vector(ctx)
            teacher_retrieval = await self.teacher_retriever.retrieve(task_text(ctx.case), vector)
        teacher_entries = teacher_retrieval.injected_entries if teacher_retrieval else []
        teacher_text = render_guidance(teacher_entries)
        lane = await self._lane(ctx, teacher_text)
        if lane.lane == "escalate" and self.escalation_agent is None:
            lane = lane.model_copy(
                update={"lane": "coach", "reason": lane.reason + "; no escalation agent: coach"}
            )
        supervision = (
            Supervision(self, lane.lane, teacher_text) if lane.lane in ("coach", "paired") else None
        )
        self._learning[ctx.session_id] = _Learning(
            lane, teacher_entries, teacher_text, supervision, lane.lane == "escalate"
        )
        guidance = await super().before_act(ctx)
        ctx.supervisor = supervision
        acting = self.escalation_agent if lane.lane == "escalate" else None
        return Guidance(
            text=guidance.text,
            retrievals=guidance.retrievals
            + (teacher_retrieval.records("teacher") if teacher_retrieval else []),
            lane=lane,
            digest=guidance.digest,
            learning_mode=self.mode,
            acting_agent=acting,
        )

    def extra_retrieval_events(self, ctx: EpisodeContext) -> list[TrajectoryEvent]:
        learning = self._learning[ctx.session_id]
        events = [self._event(ctx, LaneDecisionEvent(decision=learning.lane))]
        if learning.escalated:
            transition = SupervisionTransition.of(learning.lane)
            events.append(self._event(ctx, EscalationEvent(transition=transition)))
        return events

    def _event(self, ctx: EpisodeContext, payload: Any) -> TrajectoryEvent:
        return TrajectoryEvent(run_id=self.run_id, session_id=ctx.session_id, payload=payload)

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> ActReview:
        review = await super().after_act(ctx, result)
        learning = self._learning[ctx.session_id]
        supervision = learning.supervision
        if supervision is None:
            return review
        return ActReview(
            adopted=review.adopted,
            transitions=list(supervision.transitions),
            events=[
                event.model_dump(mode="json")
                for event in [*supervision.guidance, *supervision.failed_calls]
            ],
        )

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        """Bookkeeping and track record, synthesis, and now and then retirement (see the
        module docstring). Raises KeyError for a session these hooks did not start."""
        learning = self._learning.pop(ctx.session_id)
        episode, increments = self.take_outcome(ctx, reward)
        supervision = learning.supervision
        payloads: list[Any] = list(episode.adopted or [])
        if supervision is not None:
            payloads += [*supervision.guidance, *supervision.failed_calls]
        events = [self._event(ctx, payload) for payload in payloads]
        async with self.store.pool.acquire() as conn, conn.transaction():
            fresh = await self.store.apply_episode(
                ctx.session_id + OUTCOME_KEY_SUFFIX, increments, events, conn=conn
            )
            if fresh and not learning.escalated:
                await conn.execute(
                    """
                    INSERT INTO runner.learning_task_record
                        (task_category, episodes, passes, reward_sum)
                    VALUES ($1, 1, $2, $3)
                    ON CONFLICT (task_category) DO UPDATE SET
                        episodes = learning_task_record.episodes + 1,
                        passes = learning_task_record.passes + EXCLUDED.passes,
                        reward_sum = learning_task_record.reward_sum + EXCLUDED.reward_sum,
                        updated_at = now()
                    """,
                    ctx.case.task_category,
                    int(reward.passed),
                    float(reward.score),
                )
        if self._worth_distilling(ctx, reward, supervision):
            await self.synthesize(ctx, reward, learning, result)
        await self._maybe_retire()

    def _worth_distilling(
        self, ctx: EpisodeContext, reward: RewardRecord, supervision: Supervision | None
    ) -> bool:
        if self.settings.synthesis.episodes == "all":
            return True
        guided = supervision is not None and bool(supervision.guidance)
        return reward.score < 1.0 or guided or any(not step.ok for step in ctx.steps)

    async def synthesize(
        self,
        ctx: EpisodeContext,
        reward: RewardRecord,
        learning: _Learning,
        result: AgentResult,
    ) -> SynthesisEvent | None:
        """The teacher's candidates for this episode, through the gates, into the memory
        (once per session: None when this session's synthesis was stored before)."""
        key = ctx.session_id + SYNTHESIS_KEY_SUFFIX
        done = await self.store.pool.fetchval(
            "SELECT true FROM runner.playbook_bookkeeping WHERE key = $1", key
        )
        if done:
            return None
        view = teacher_view(
            ctx,
            lane=learning.lane.lane,
            playbook_guidance=learning.teacher_text,
            final_reply=result.final_reply,
            guidance_given=[e.text for e in learning.supervision.guidance]
            if learning.supervision
            else [],
            reward=reward,
        )
        reply = await self.teacher.synthesize(view)
        # The session trace is written after this hook: the call is the episode's cost.
        _charge(ctx, reply)
        candidates = reply.answer.candidates if reply.answer else []
        gated = apply_gates(candidates, case_values(ctx.user_turns, ctx.steps, ctx.tools))
        provenance = Provenance(
            episode_ids=[ctx.session_id], run_ids=[self.run_id], teacher_call_ids=[reply.call_id]
        )
        vectors: list[list[float]] = []
        if gated.accepted:
            embedder = self.retriever.embedder
            texts = [candidate.cue.text for candidate in gated.accepted]
            vectors = await asyncio.to_thread(embedder.embed, texts)
        event = SynthesisEvent(teacher_call_id=reply.call_id, refused=gated.refused)
        extra: list[Any] = []
        if reply.answer is None:
            extra.append(
                TeacherCallEvent(
                    call="synthesis",
                    teacher_call_id=reply.call_id,
                    error=reply.error or "no answer",
                    raw_text=reply.raw_text[:2000],
                )
            )
        async with self.store.pool.acquire() as conn, conn.transaction():
            fresh = await self.store.apply_episode(key, {}, [], conn=conn)
            if not fresh:
                return None
            for candidate, vector in zip(gated.accepted, vectors, strict=True):
                stored = await self.store.add_or_merge(
                    PlaybookCandidate(**candidate.model_dump(), provenance=provenance),
                    vector,
                    near_duplicate_threshold=self.settings.synthesis.near_duplicate_threshold,
                    conn=conn,
                )
                event.stored[stored.entry.entry_id] = stored.outcome
            for payload in [event, *extra]:
                await self.store.record_event(self._event(ctx, payload), conn=conn)
        return event

    async def _maybe_retire(self) -> None:
        self._episodes_since_check += 1
        if self._episodes_since_check < self.settings.retirement.check_every:
            return
        if self._retirement_lock.locked():
            return
        async with self._retirement_lock:
            self._episodes_since_check = 0
            await self.retire_entries()

    async def retire_entries(self) -> list[tuple[str, str]]:
        """Retires the active entries that are harmful (`harmful`) or have not been
        retrieved in `never_fired_after` episodes of the memory since they were created;
        returns (entry id, reason) of each one retired now."""
        settings = self.settings.retirement
        entries = await self.store.list_entries(status="active")
        if not entries:
            return []
        counters = await self.store.counters_of([entry.entry_id for entry in entries])
        silent = [entry for entry in entries if counters[entry.entry_id].retrieved == 0]
        # Episodes the memory ran since each silent entry was created, in one query.
        rows = await self.store.pool.fetch(
            """
            SELECT e.entry_id, count(b.key) AS since
            FROM runner.playbook_entry AS e
            LEFT JOIN runner.playbook_bookkeeping AS b
              ON b.applied_at > e.created_at AND position('#' in b.key) = 0
            WHERE e.entry_id = ANY($1::text[])
            GROUP BY e.entry_id
            """,
            [entry.entry_id for entry in silent],
        )
        episodes_since = {row["entry_id"]: int(row["since"]) for row in rows}
        retired: list[tuple[str, str]] = []
        for entry in entries:
            record = counters[entry.entry_id]
            reason = harmful(record, settings)
            code: Any = "harmful"
            since = episodes_since.get(entry.entry_id, 0)
            if reason is None and record.retrieved == 0 and since >= settings.never_fired_after:
                code = "never_fired"
                reason = f"not retrieved in the {since} episodes since it was created"
            if reason is not None:
                await self.store.retire(entry.entry_id, reason, code=code, run_id=self.run_id)
                retired.append((entry.entry_id, reason))
        return retired


@asynccontextmanager
async def learning_hooks(
    settings: LearningSettings,
    pool: asyncpg.Pool,
    *,
    run_id: str,
    teacher: Teacher | None = None,
    escalation_agent: Agent | None = None,
    write_tools: frozenset[str] = frozenset(),
) -> AsyncIterator[RetrievalHooks | None]:
    """The hooks a run's `learning:` settings ask for, over the memory in `pool`'s
    database (migrations 0006, 0007): None for mode `off`, without building an embedder
    or touching a table; `RetrievalHooks` for `frozen`; `LearningHooks` for `on` (then
    `teacher` is required: ValueError without it).

    Raises EmbeddingError / MissingApiKey when the embedder cannot be built, and
    EmbedderMismatch when the memory holds this embedder's vectors of another size."""
    if settings.mode == "off":
        yield None
        return
    if settings.mode == "on" and teacher is None:
        raise ValueError("learning mode 'on' needs a teacher")
    embedder: Embedder = await asyncio.to_thread(make_embedder, settings.embeddings)
    store = await PlaybookStore.open(pool, embedder=embedder.name, dimension=embedder.dimensions)
    subsets = ToolSubsets.load() if settings.tool_subset else None
    try:
        retriever = PlaybookRetriever(
            store,
            embedder,
            k=settings.k,
            threshold=settings.threshold,
            k_universal=settings.k_universal,
        )
        if settings.mode == "frozen" or teacher is None:
            # No exploration when frozen: it only feeds retirement, which is off, and
            # would withhold guidance from the transfer test.
            yield RetrievalHooks(
                retriever, run_id=run_id, control=settings.control, tool_subsets=subsets
            )
        else:
            teacher_retriever = PlaybookRetriever(
                store,
                embedder,
                k=settings.k,
                threshold=settings.threshold,
                audience="teacher",
                k_universal=settings.k_universal,
            )
            yield LearningHooks(
                retriever,
                run_id=run_id,
                settings=settings,
                teacher=teacher,
                write_tools=write_tools,
                teacher_retriever=teacher_retriever,
                escalation_agent=escalation_agent,
                tool_subsets=subsets,
            )
    finally:
        await store.close()
        close = getattr(embedder, "close", None)
        if close is not None:
            close()
