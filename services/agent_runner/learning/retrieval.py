"""Retrieval and injection, the first step of the learning loop (design/learning.md), and
the whole of its frozen mode: before the student acts, the task is embedded, the playbook
memory is searched (and the entries' exact cue patterns matched), and the top k entries
go into the student's system prompt as a short numbered list.

- `task_text(case)`: what is embedded and matched: the user's turns and the task
  category, never the case's expected state, reference actions or reply, nor its id.
- `PlaybookRetriever.retrieve(text)`: search plus patterns, merged and ranked
  (`Retrieval`: every retrieved entry, the top k marked injected, the guidance text and
  its digest). No writes.
- `RetrievalHooks`: the `EpisodeHooks` of a frozen run. `before_act` retrieves, applies
  the retrieval's bookkeeping (retrieved and injected counters, one `retrieval`
  trajectory event) at most once per session id, and returns the `Guidance`; `after_act`
  decides which injected entries the trajectory followed (`agent_runner.learning.
  adoption`); `after_reward` applies the outcome's bookkeeping (followed, and the "with"
  reward and token sums of every injected entry, one `adoption` event per followed
  entry) at most once per session id. No synthesis, no teacher, no retirement.
- `learning_hooks(settings, pool, run_id)`: the hooks a run's `learning:` settings ask for
  (None when the mode is off: nothing is built, no table is read).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg

from agent_runner.agents.base import AgentResult, EpisodeContext
from agent_runner.learning.adoption import adoptions, outcome_increments
from agent_runner.learning.memory import PlaybookMatch, PlaybookStore
from agent_runner.run.config import LearningSettings
from agent_runner.run.hooks import ActReview, Guidance
from crmbench_contracts.cases import Case
from crmbench_contracts.playbooks import (
    AdoptionEvent,
    CounterField,
    PlaybookEntry,
    RetrievalEvent,
    TrajectoryEvent,
)
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.traces import Audience, CueMatch, PlaybookRetrieval
from crmbench_learning.embeddings import Embedder, make_embedder

GUIDANCE_HEADER = (
    "Playbook entries from earlier episodes that match this task (apply them where they fit):"
)


def task_text(case: Case) -> str:
    """The text retrieval embeds and matches cue patterns against: the case's user turns,
    one per line, then `Task category: <category in lower case>`.

    Only what the agent itself is given goes in: the expected state, the reference
    actions and reply, the allowed changes and the case id would leak the answer (or the
    case's identity) into retrieval, so they never do."""
    category = case.task_category.replace("_", " ").lower()
    turns = [turn.content.strip() for turn in case.turns if turn.role == "user"]
    return "\n".join([*turns, f"Task category: {category}"])


def cue_matches(entry: PlaybookEntry, text: str) -> bool:
    """Whether one of the entry's cue patterns is found in `text` (`re.search`,
    case-insensitive, as `Cue.patterns` specifies)."""
    return any(re.search(pattern, text, re.IGNORECASE) for pattern in entry.cue.patterns)


def guidance_digest(text: str) -> str:
    """SHA-256 (hex) of the injected guidance text, as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RetrievedEntry:
    """One entry retrieved for a task, and how."""

    entry: PlaybookEntry
    similarity: float | None
    """Cosine similarity of the task to the entry's cue; None when only a pattern matched
    (the entry was not among the search's top k above the threshold)."""
    cue_match: CueMatch


def merge(
    semantic: Sequence[PlaybookMatch], patterned: Sequence[PlaybookEntry]
) -> list[RetrievedEntry]:
    """Search results and pattern matches as one ranking, without repeats.

    Entries a cue pattern matched come first (a pattern is the entry author's exact
    statement of when it applies): those the search also found (`both`) by similarity,
    then the pattern-only ones in the order given; then the search's other results by
    similarity. Ties keep the search's order (by entry id)."""
    by_id = {match.entry.entry_id: match for match in semantic}
    pattern_ids = {entry.entry_id for entry in patterned}
    both = [
        RetrievedEntry(match.entry, match.similarity, "both")
        for match in semantic
        if match.entry.entry_id in pattern_ids
    ]
    pattern_only = [
        RetrievedEntry(entry, None, "pattern") for entry in patterned if entry.entry_id not in by_id
    ]
    semantic_only = [
        RetrievedEntry(match.entry, match.similarity, "semantic")
        for match in semantic
        if match.entry.entry_id not in pattern_ids
    ]
    return [*both, *pattern_only, *semantic_only]


def render_guidance(entries: Sequence[PlaybookEntry]) -> str:
    """The injected text: a header and one numbered line per entry, its action and its
    expected effect. Empty for no entry."""
    if not entries:
        return ""
    lines = [GUIDANCE_HEADER]
    for number, entry in enumerate(entries, start=1):
        action = entry.action.text.rstrip()
        effect = entry.expected_effect.rstrip()
        lines.append(f"{number}. {action} (Expected effect: {effect})")
    return "\n".join(lines)


@dataclass(frozen=True)
class Retrieval:
    """What retrieval found for one task."""

    retrieved: list[RetrievedEntry]
    """Every entry found, best first; the first `injected` of them go into the prompt."""
    injected: int
    text: str
    """The guidance text of the injected entries ("" when none)."""

    @property
    def digest(self) -> str | None:
        """SHA-256 of `text`; None when nothing was injected."""
        return guidance_digest(self.text) if self.text else None

    @property
    def injected_entries(self) -> list[PlaybookEntry]:
        """The entries that went into the prompt, in the order they were numbered."""
        return [item.entry for item in self.retrieved[: self.injected]]

    def records(self, audience: Audience) -> list[PlaybookRetrieval]:
        """The retrievals as the session trace and the trajectory event record them."""
        return [
            PlaybookRetrieval(
                entry_id=item.entry.entry_id,
                similarity=item.similarity,
                cue_match=item.cue_match,
                injected=rank < self.injected,
                audience=audience,
            )
            for rank, item in enumerate(self.retrieved)
        ]

    def increments(self) -> dict[str, dict[CounterField, float]]:
        """Counter increments per entry id: `retrieved` +1 for each entry found,
        `injected` +1 for each injected one."""
        bumps: dict[str, dict[CounterField, float]] = {}
        for rank, item in enumerate(self.retrieved):
            counters: dict[CounterField, float] = {"retrieved": 1}
            if rank < self.injected:
                counters["injected"] = 1
            bumps[item.entry.entry_id] = counters
        return bumps


class PlaybookRetriever:
    """Finds the playbook entries for a task: the memory's exact search (active entries
    of `audience` with cosine >= `threshold`, top `k`) plus every active entry of
    `audience` whose cue pattern the task matches, merged (`merge`); the first `k` are
    injected. Reads only."""

    def __init__(
        self,
        store: PlaybookStore,
        embedder: Embedder,
        *,
        k: int,
        threshold: float,
        audience: Audience = "student",
    ) -> None:
        if embedder.name != store.embedder:
            raise ValueError(
                f"the store searches {store.embedder!r} vectors, the embedder makes "
                f"{embedder.name!r} ones"
            )
        self.store = store
        self.embedder = embedder
        self.k = k
        self.threshold = threshold
        self.audience: Audience = audience

    async def retrieve(self, text: str) -> Retrieval:
        """Retrieval for `text` (see `task_text`). Raises EmbeddingError for a blank text,
        the embedder's errors (LLMError for the OpenAI provider) and asyncpg's."""
        [vector] = await asyncio.to_thread(self.embedder.embed, [text])
        semantic = await self.store.search(
            vector, k=self.k, threshold=self.threshold, audience=self.audience
        )
        patterned = [
            entry
            for entry in await self.store.patterned_entries(self.audience)
            if cue_matches(entry, text)
        ]
        found = merge(semantic, patterned)
        injected = [item.entry for item in found[: self.k]]
        return Retrieval(found, len(injected), render_guidance(injected))


OUTCOME_KEY_SUFFIX = "#outcome"
"""Appended to the session id to key the outcome's bookkeeping (`after_reward`), which is
applied once like the retrieval's (keyed by the session id alone)."""


@dataclass
class _Episode:
    """What the hooks keep of one episode between `before_act` and `after_reward`."""

    injected: list[PlaybookEntry]
    adopted: list[AdoptionEvent] | None = None


class RetrievalHooks:
    """The episode hooks of a frozen run: retrieval and injection before the student
    acts, adoption after it acts, bookkeeping after the reward (no synthesis, no teacher
    guidance, no retirement).

    `before_act` embeds `task_text(case)`, retrieves (`PlaybookRetriever`), and applies
    the retrieval's bookkeeping with `PlaybookStore.apply_episode` keyed by the session id:
    `retrieved` and `injected` counters and one `retrieval` trajectory event (also when
    nothing was found), together and at most once, so an episode played again (a
    provider outage, a resumed run, a claim taken over) is counted once. It returns the
    guidance text, the retrievals and the text's digest, which the runner puts in the
    student's prompt and the session trace.

    `after_act` returns the ids of the injected entries the steps follow (`adoption`),
    which the runner records as `crm_context.playbooks_adopted`. `after_reward` applies,
    keyed by the session id plus `OUTCOME_KEY_SUFFIX` and so also at most once, for every
    injected entry `episodes_with` +1, `reward_sum_with` + score, `reward_sq_sum_with` +
    score², `tokens_sum_with` + the episode's tokens, `followed` +1 for the adopted ones,
    and one `adoption` event per adopted entry. An episode replayed after its outcome was
    counted is not counted again, even if its replay follows other entries: the counters
    keep the first complete play, the trace records the last.

    The injected entries are kept in memory from `before_act` to `after_reward` (the
    version injected is the one judged), per session id; an episode that ends before
    `after_reward` (a harness error) leaves its few entries here until the hooks go."""

    def __init__(self, retriever: PlaybookRetriever, *, run_id: str) -> None:
        self.retriever = retriever
        self.run_id = run_id
        self._episodes: dict[str, _Episode] = {}

    async def before_act(self, ctx: EpisodeContext) -> Guidance:
        retrieval = await self.retriever.retrieve(task_text(ctx.case))
        records = retrieval.records(self.retriever.audience)
        event = TrajectoryEvent(
            run_id=self.run_id,
            session_id=ctx.session_id,
            payload=RetrievalEvent(retrieved=records, injected_digest=retrieval.digest),
        )
        await self.retriever.store.apply_episode(ctx.session_id, retrieval.increments(), [event])
        self._episodes[ctx.session_id] = _Episode(retrieval.injected_entries)
        return Guidance(
            text=retrieval.text,
            retrievals=records,
            digest=retrieval.digest,
            learning_mode="frozen",
        )

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> ActReview:
        """The injected entries the episode's steps follow. Raises KeyError for a session
        whose `before_act` these hooks did not run."""
        episode = self._episodes[ctx.session_id]
        episode.adopted = adoptions(episode.injected, ctx.steps)
        return ActReview(adopted=[event.entry_id for event in episode.adopted])

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        """The outcome's bookkeeping (see the class); nothing when no entry was injected.
        Raises KeyError for a session whose `after_act` these hooks did not run."""
        episode = self._episodes.pop(ctx.session_id)
        if episode.adopted is None:
            raise KeyError(f"after_act did not run for {ctx.session_id}")
        if not episode.injected:
            return
        increments = outcome_increments(
            episode.injected,
            [event.entry_id for event in episode.adopted],
            reward=reward.score,
            tokens=ctx.tokens_used,
        )
        events = [
            TrajectoryEvent(run_id=self.run_id, session_id=ctx.session_id, payload=event)
            for event in episode.adopted
        ]
        await self.retriever.store.apply_episode(
            ctx.session_id + OUTCOME_KEY_SUFFIX, increments, events
        )


@asynccontextmanager
async def learning_hooks(
    settings: LearningSettings, pool: asyncpg.Pool, *, run_id: str
) -> AsyncIterator[RetrievalHooks | None]:
    """The hooks a run's `learning:` settings ask for, over the memory in `pool`'s
    database (migration 0006): None for mode `off`, without building an embedder or
    touching a table; `RetrievalHooks` for `frozen`.

    Raises EmbeddingError / MissingApiKey when the embedder cannot be built, and
    EmbedderMismatch when the memory holds this embedder's vectors of another size."""
    if settings.mode == "off":
        yield None
        return
    embedder = await asyncio.to_thread(make_embedder, settings.embeddings)
    store = await PlaybookStore.open(pool, embedder=embedder.name, dimension=embedder.dimensions)
    try:
        retriever = PlaybookRetriever(store, embedder, k=settings.k, threshold=settings.threshold)
        yield RetrievalHooks(retriever, run_id=run_id)
    finally:
        await store.close()
        close = getattr(embedder, "close", None)
        if close is not None:
            close()
