"""Running a run: queue its (case, trial) items, then claim and play episodes until none is
left, writing each episode's result and telemetry exactly once.

One episode: open it on the CRM API for the case, let the agent act through the tools,
score the final state with the verifier, read the change log to attach each step's state
change, close it, then commit the session and steps (Postgres) and append them (JSONL).
The learning loop plugs in at the episode's `EpisodeHooks` (before acting, after acting,
after the reward).

Whose failure an episode's end is decides what happens to it (see docs/agent_runner.md):
the model's failures are scored; a provider outage gives the item back to the queue (up
to MAX_START_ATTEMPTS claims, then `harness_error`); a provider that refuses the run's
setup (key, permission, model) stops the run with `RunStopped`, the item unscored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from agent_runner.agents.base import Agent, EpisodeContext, EpisodeLimits
from agent_runner.run.config import ConfigError, RunConfig
from agent_runner.run.hooks import (
    ActReview,
    EpisodeHooks,
    Guidance,
    HookFailed,
    NoHooks,
    run_hook,
)
from agent_runner.run.store import Claim, RunRow, RunStore
from agent_runner.run.trace_log import RUN_FILE, TRACE_FILE, TraceLog
from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import ServiceError
from crmbench_clients.verifier import VerifierClient
from crmbench_contracts.cases import Case
from crmbench_contracts.traces import (
    CrmContext,
    EpisodeOutcome,
    SessionTrace,
    StepTrace,
    SupervisionTransition,
    new_usage,
)
from crmbench_llm.base import LLMError
from crmbench_llm.types import ToolSpec

logger = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return metadata.version("crm-bench")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def select_cases(config: RunConfig, corpus: Sequence[Case]) -> list[Case]:
    """The run's cases: the ids asked for (in that order), else the split; then the limit."""
    if config.cases:
        index = {case.case_id: case for case in corpus}
        unknown = [case_id for case_id in config.cases if case_id not in index]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ConfigError(f"unknown case ids: {shown}")
        chosen = [index[case_id] for case_id in config.cases]
    else:
        chosen = [case for case in corpus if case.split == config.split]
    if config.limit is not None:
        chosen = chosen[: config.limit]
    if not chosen:
        raise ConfigError("the run has no cases: check --split, --cases and --limit")
    return chosen


def session_id_of(run_id: str, case_id: str, trial: int) -> str:
    return f"{run_id}/{case_id}/{trial}"


def crm_context(case: Case) -> CrmContext:
    return CrmContext(
        case_id=case.case_id,
        task_category=case.task_category,
        workflow=case.workflow,
        difficulty=case.difficulty.value,
        split=case.split.value,
        failure_category=case.failure.category if case.failure else None,
        failure_family=case.failure.family.value if case.failure else None,
    )


def learning_context(guidance: Guidance | None, review: ActReview | None = None) -> dict[str, Any]:
    """The `CrmContext` fields the hooks fill: from `before_act`'s guidance its learning
    mode, its retrievals and their injected text's digest, and its lane (the first
    supervision transition); from `after_act`'s review the adopted entries. Nothing for
    what a hook did not return."""
    fields: dict[str, Any] = {}
    if guidance is not None:
        transitions = [SupervisionTransition.of(guidance.lane)] if guidance.lane else []
        if review is not None:
            transitions += review.transitions
        fields |= {
            "learning_mode": guidance.learning_mode,
            "playbooks_retrieved": list(guidance.retrievals),
            "injected_digest": guidance.digest,
            "injected_guidance": guidance.text or None,
            "lane": guidance.lane,
            "supervision_transitions": transitions,
        }
    if review is not None:
        fields["playbooks_adopted"] = list(review.adopted)
        fields["trajectory"] = list(review.events)
    return fields


@dataclass
class RunFiles:
    """The run's directory: run.json (what ran) and sessions.jsonl (the traces)."""

    directory: Path

    @property
    def run_file(self) -> Path:
        return self.directory / RUN_FILE

    @property
    def trace_file(self) -> Path:
        return self.directory / TRACE_FILE

    def existing_run_id(self) -> str | None:
        if not self.run_file.exists():
            return None
        try:
            return str(json.loads(self.run_file.read_text(encoding="utf-8"))["run_id"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"{self.run_file} is not a run file: {exc}") from exc

    def write(self, run: RunRow) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "run_id": run.run_id,
            "agent": run.agent,
            "model": run.model,
            "corpus_hash": run.corpus_hash,
            "package_version": run.package_version,
            "total_items": run.total_items,
            "created_at": run.created_at.isoformat() if run.created_at else None,
            "config": run.config,
        }
        temporary = self.run_file.with_suffix(f".{os.getpid()}.{secrets.token_hex(3)}.tmp")
        temporary.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, self.run_file)


async def create_run(
    store: RunStore,
    config: RunConfig,
    cases: Sequence[Case],
    corpus_hash: str,
    out_dir: str | None,
    *,
    run_id: str | None = None,
) -> RunRow:
    """Records the run (config, corpus hash, package version) and queues its items."""
    run_id = run_id or new_run_id()
    items = [(case.case_id, trial) for case in cases for trial in range(config.trials)]
    await store.create_run(
        run_id,
        agent=config.agent,
        model=model_name(config),
        config=config.model_dump(mode="json"),
        corpus_hash=corpus_hash,
        package_version=package_version(),
        out_dir=out_dir,
        items=items,
    )
    return await store.get_run(run_id)


def model_name(config: RunConfig) -> str | None:
    if config.agent in ("student", "teacher"):
        return config.provider_for(config.agent).model
    if config.agent == "simulated":
        return "simulated-llm"
    return None


MAX_START_ATTEMPTS = 3
"""Claims of an item whose episode could not be played (the CRM API or the model provider
unreachable) before it ends as a `harness_error`."""
RETRY_PAUSE_SECONDS = 1.0

SETUP_ADVICE: dict[int, str] = {
    401: "the API key was refused: check the key in the provider's environment variable "
    "(and that base_url is the server the key is for)",
    403: "the key may not use this model: check the key's project and permissions",
    404: "the model or endpoint does not exist: check the model name and base_url",
}


class RunStopped(Exception):
    """The run cannot go on as configured: the model provider refused its key, its
    permissions or its model. The episode in hand went back to the queue, unscored, so
    the run resumes where it stopped once the configuration is fixed."""

    def __init__(self, run_id: str, error: LLMError) -> None:
        advice = SETUP_ADVICE.get(error.status or 0, "fix the provider configuration")
        super().__init__(
            f"run {run_id} stopped: the {error.provider} provider refused the run ({error}); "
            f"{advice}. No episode was scored for this; the remaining ones stay queued."
        )
        self.run_id = run_id
        self.error = error


@dataclass
class EpisodeRecord:
    session: SessionTrace
    steps: list[StepTrace]
    not_started: bool = False
    """The episode could not be opened: the agent never acted."""
    provider_error: LLMError | None = None
    """The model provider failed for a reason that is not the model's (an outage, a
    refused key): the episode says nothing about the model and is not scored."""


@dataclass
class WorkerStats:
    completed: int = 0
    discarded: int = 0
    """Episodes whose item was taken over by another worker; their results were dropped."""
    failures: list[str] = field(default_factory=list)


class EpisodeRunner:
    """Plays one episode of one case with one agent, end to end."""

    def __init__(
        self,
        *,
        run_id: str,
        config: RunConfig,
        agent: Agent,
        crm: CrmApiClient,
        verifier: VerifierClient,
        tools: list[ToolSpec],
        worker: str,
        hooks: EpisodeHooks | None = None,
    ) -> None:
        self.run_id = run_id
        self.config = config
        self.agent = agent
        self.crm = crm
        self.verifier = verifier
        self.tools = tools
        self.worker = worker
        self.hooks: EpisodeHooks = hooks if hooks is not None else NoHooks()

    async def play(self, case: Case, trial: int) -> EpisodeRecord:
        """Plays the episode; failures of the services, the agent or a hook end up in the
        session's outcome (`harness_error`) rather than being raised."""
        started_at = datetime.now(UTC)
        clock = time.perf_counter()
        session_id = session_id_of(self.run_id, case.case_id, trial)
        ctx: EpisodeContext | None = None
        episode_id: str | None = None
        not_started = False
        provider_error: LLMError | None = None
        final_reply = ""
        outcome: EpisodeOutcome = "completed"
        error: str | None = None
        reward = None
        guidance: Guidance | None = None
        review: ActReview | None = None
        try:
            try:
                episode = await self.crm.open_episode(
                    case.case_id, ttl_seconds=self.config.limits.episode_ttl_seconds
                )
            except ServiceError:
                not_started = True
                raise
            episode_id = episode.episode_id
            ctx = EpisodeContext(
                session_id=session_id,
                case=case,
                trial=trial,
                tools=self.tools,
                crm=self.crm,
                token=episode.token,
                limits=EpisodeLimits(self.config.limits.max_steps, self.config.limits.max_tokens),
                seed=self.config.seed,
            )
            try:
                guidance = await run_hook("before_act", self.hooks.before_act(ctx))
                agent = self.agent
                if guidance is not None:
                    ctx.guidance = guidance.text
                    agent = guidance.acting_agent or self.agent
                result = await agent.run(ctx)
                final_reply, outcome, error = result.final_reply, result.outcome, result.error
                review = await run_hook("after_act", self.hooks.after_act(ctx, result))
                scored = await self.verifier.verify(
                    case.case_id, episode_id, final_reply, ctx.transcript
                )
                reward = scored
                changes = await self.crm.changes_by_tool_call(episode_id)
                for step in ctx.steps:
                    step.state_change = changes.get(step.tool_call_id, [])
                    step.reward = scored.score
            finally:
                try:
                    await self.crm.close_episode(episode_id)
                except ServiceError as exc:
                    logger.warning("episode_close_failed", extra={"error": str(exc)})
            # After the close: synthesis may take long and needs no live episode. Its
            # failure loses no work already done: the outcome and reward stand.
            try:
                await run_hook("after_reward", self.hooks.after_reward(ctx, result, scored))
            except HookFailed as exc:
                logger.warning("episode %s: %s", session_id, exc)
                error = str(exc)
        except ServiceError as exc:
            outcome, error, reward = "harness_error", str(exc), None
        except LLMError as exc:
            # The agent raises only what is not the model's fault; a hook may raise any.
            outcome, error, reward = "harness_error", str(exc), None
            if exc.fault != "model":
                provider_error = exc
            logger.warning("episode %s: model provider failed: %s", session_id, exc)
        except Exception as exc:  # an agent bug must not stop the run; it is recorded
            logger.exception("episode_crashed")
            outcome, error, reward = "harness_error", f"{type(exc).__name__}: {exc}", None
        wall_ms = (time.perf_counter() - clock) * 1000
        steps = ctx.steps if ctx is not None else []
        usage = ctx.usage if ctx is not None else new_usage()
        session = SessionTrace(
            session_id=session_id,
            run_id=self.run_id,
            case_id=case.case_id,
            trial=trial,
            agent=self.agent.name,
            model=self.agent.model,
            episode_id=episode_id,
            task="\n\n".join(turn.content for turn in case.turns),
            final_answer=final_reply,
            outcome=outcome,
            error=error,
            steps=len(steps),
            score=reward.score if reward else 0.0,
            passed=reward.passed if reward else False,
            verdicts=reward.verdicts if reward else {},
            reward=reward,
            token_usage=usage,
            crm_context=crm_context(case).model_copy(
                update={
                    "verification_mode": reward.verification_mode if reward else None,
                    **learning_context(guidance, review),
                }
            ),
            started_at=started_at,
            ended_at=datetime.now(UTC),
            wall_ms=round(wall_ms, 3),
            agent_ms=round(ctx.agent_ms if ctx is not None else 0.0, 3),
            worker=self.worker,
        )
        return EpisodeRecord(session, steps, not_started, provider_error)


ProgressCallback = Callable[[SessionTrace], None]


class RunWorker:
    """Claims this run's items until the queue is empty, `concurrency` at a time."""

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        config: RunConfig,
        cases: dict[str, Case],
        episodes: EpisodeRunner,
        trace_log: TraceLog | None,
        *,
        worker: str,
        on_episode: ProgressCallback | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.config = config
        self.cases = cases
        self.episodes = episodes
        self.trace_log = trace_log
        self.worker = worker
        self.on_episode = on_episode
        self.stats = WorkerStats()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the episodes in flight, claim no more."""
        self._stopping.set()

    async def reconcile_traces(self) -> tuple[int, int]:
        """Brings the JSONL file in line with the committed sessions (after a crash)."""
        if self.trace_log is None:
            return 0, 0
        # Repair first: a cut-off episode is dropped here and counts as missing below.
        dropped, _ = await asyncio.to_thread(self.trace_log.reconcile)
        in_file = await asyncio.to_thread(self.trace_log.session_ids)
        committed = await self.store.session_ids(self.run_id)
        missing = sorted(committed - in_file)
        traces = await self.store.traces(self.run_id, missing) if missing else []
        more_dropped, appended = await asyncio.to_thread(self.trace_log.reconcile, traces)
        return dropped + more_dropped, appended

    async def run(self) -> WorkerStats:
        await self.reconcile_traces()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            # A TaskGroup cancels the other loops when one fails; cancelled loops hand
            # their claims back instead of playing on with closed clients.
            try:
                async with asyncio.TaskGroup() as loops:
                    for _ in range(self.config.concurrency):
                        loops.create_task(self._loop())
            except* Exception as group:
                # The first failure (a lost database, say) is the one worth reporting.
                raise group.exceptions[0] from None
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self.reconcile_traces()
        await self.store.mark_finished(self.run_id)
        return self.stats

    async def _heartbeat(self) -> None:
        queue = self.config.queue
        while True:
            await asyncio.sleep(queue.heartbeat_seconds)
            try:
                await self.store.heartbeat(self.run_id, self.worker, queue.lease_seconds)
            except Exception:  # a missed heartbeat only shortens the lease
                logger.exception("heartbeat_failed")

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            claim = await self.store.claim(
                self.run_id, self.worker, self.config.queue.lease_seconds
            )
            if claim is None:
                return
            await self._play(claim)

    async def _play(self, claim: Claim) -> None:
        case = self.cases.get(claim.case_id)
        if case is None:
            # The corpus changed under a resumed run: say so rather than guess.
            self.stats.failures.append(f"{claim.case_id}: not in this corpus")
            await self.store.release(claim, self.worker)
            self._stopping.set()
            return
        try:
            record = await self.episodes.play(case, claim.trial)
        except asyncio.CancelledError:
            await asyncio.shield(self.store.release(claim, self.worker))
            raise
        failure = record.provider_error
        if failure is not None and failure.fault == "setup":
            # Every episode would fail alike: stop, and leave this one to be played when
            # the run resumes with a working key or model.
            await self.store.release(claim, self.worker)
            raise RunStopped(self.run_id, failure)
        if (record.not_started or failure is not None) and claim.attempts < MAX_START_ATTEMPTS:
            # The CRM API or the model provider was unreachable: the episode says nothing
            # about the agent, so the item goes back to the queue rather than ending as an
            # error (or being scored as the model's failure).
            await self.store.release(claim, self.worker)
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            return
        if not await self.store.complete(claim, self.worker, record.session, record.steps):
            self.stats.discarded += 1
            return
        if self.trace_log is not None:
            await asyncio.to_thread(self.trace_log.append, record.session, record.steps)
        self.stats.completed += 1
        if self.on_episode is not None:
            self.on_episode(record.session)


def summary_line(values: dict[str, Any]) -> str:
    return "  ".join(f"{key}={value}" for key, value in values.items())


async def work_on_run(
    *,
    store: RunStore,
    run_id: str,
    config: RunConfig,
    cases: dict[str, Case],
    agent: Agent,
    crm: CrmApiClient,
    verifier: VerifierClient,
    trace_dir: Path | None,
    worker: str | None = None,
    on_episode: ProgressCallback | None = None,
    hooks: EpisodeHooks | None = None,
) -> WorkerStats:
    """Plays this run's unclaimed items in this process until the queue is empty; `hooks`
    (none by default) are called in every episode."""
    worker = worker or worker_name()
    episodes = EpisodeRunner(
        run_id=run_id,
        config=config,
        agent=agent,
        crm=crm,
        verifier=verifier,
        tools=[
            ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters)
            for tool in await crm.tools()
        ],
        worker=worker,
        hooks=hooks,
    )
    trace_log = TraceLog(trace_dir / TRACE_FILE) if trace_dir is not None else None
    run_worker = RunWorker(
        store, run_id, config, cases, episodes, trace_log, worker=worker, on_episode=on_episode
    )
    return await run_worker.run()
