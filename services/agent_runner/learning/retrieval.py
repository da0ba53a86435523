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
- The hooks a run's `learning:` settings ask for are built by
  `agent_runner.learning.loop.learning_hooks`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent_runner.agents.base import AgentResult, EpisodeContext
from agent_runner.learning.adoption import adoptions, outcome_increments, prescribed_tools
from agent_runner.learning.memory import PlaybookMatch, PlaybookStore
from agent_runner.learning.tool_subsets import ToolSubsets
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
from crmbench_contracts.traces import Audience, CueMatch, LearningMode, PlaybookRetrieval
from crmbench_learning.embeddings import Embedder

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
    withheld: PlaybookEntry | None = None
    """The top entry exploration kept out of the prompt (`withholding_first`): the only
    "without" episode the harmful-entry test counts, because only this withholding is
    random (an entry ranked below k was left out for being less relevant, so its episodes
    are not comparable with the ones it was injected in)."""

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
                observable=bool(prescribed_tools(item.entry)),
                level=item.entry.level,
            )
            for rank, item in enumerate(self.retrieved)
        ]

    @property
    def not_injected_entries(self) -> list[PlaybookEntry]:
        """Entries whose cue matched but that stayed out of the prompt (ranked below k,
        or withheld for exploration): the "without" side of their track record. Shuffled
        draws have no cue match and are never here."""
        return [
            item.entry for item in self.retrieved[self.injected :] if item.cue_match != "shuffled"
        ]

    def withholding_first(self) -> Retrieval:
        """The same retrieval with its top injected entry kept out of the prompt (moved
        just below the injected ones), the text re-rendered. Unchanged when none was
        injected."""
        if not self.injected:
            return self
        first, rest = self.retrieved[0], self.retrieved[1:]
        injected = self.injected - 1
        retrieved = [*rest[:injected], first, *rest[injected:]]
        return Retrieval(
            retrieved,
            injected,
            render_guidance([item.entry for item in retrieved[:injected]]),
            withheld=first.entry,
        )

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


UNIVERSAL_PRIOR_EPISODES = 2.0
"""Weight, in episodes, of the optimistic reward 1.0 a universal entry starts with when
universal entries are ranked (`PlaybookRetriever.rank_universal`)."""


class PlaybookRetriever:
    """Finds the playbook entries for a task: the memory's exact search (active entries
    of `audience` with cosine >= `threshold`, top `k + k_universal`) plus every active
    entry of `audience` whose cue pattern the task matches, merged (`merge`). The first
    `k` entries below the universal level and the first `k_universal` universal ones are
    injected (universal entries match any task; a slot of their own keeps them from
    crowding out the task's own lessons). Reads only."""

    def __init__(
        self,
        store: PlaybookStore,
        embedder: Embedder,
        *,
        k: int,
        threshold: float,
        audience: Audience = "student",
        k_universal: int = 0,
    ) -> None:
        if embedder.name != store.embedder:
            raise ValueError(
                f"the store searches {store.embedder!r} vectors, the embedder makes "
                f"{embedder.name!r} ones"
            )
        self.store = store
        self.embedder = embedder
        self.k = k
        self.k_universal = k_universal
        self.threshold = threshold
        self.audience: Audience = audience

    async def retrieve(self, text: str, vector: Sequence[float] | None = None) -> Retrieval:
        """Retrieval for `text` (see `task_text`); `vector` is its embedding when the
        caller has it already (one embedding serves both audiences). Raises
        EmbeddingError for a blank text, the embedder's errors (LLMError for the OpenAI
        provider) and asyncpg's."""
        if vector is None:
            [vector] = await asyncio.to_thread(self.embedder.embed, [text])
        semantic = await self.store.search(
            vector, k=self.k + self.k_universal, threshold=self.threshold, audience=self.audience
        )
        patterned = [
            entry
            for entry in await self.store.patterned_entries(self.audience)
            if cue_matches(entry, text)
        ]
        found = merge(semantic, patterned)
        specific = [item for item in found if item.entry.level != "universal"]
        universal = await self.rank_universal(
            [item for item in found if item.entry.level == "universal"]
        )
        # The task's own lessons get the k slots; universal ones (which match any task)
        # get their own `k_universal`, so they never crowd a task's lesson out.
        chosen = specific[: self.k] + universal[: self.k_universal]
        rest = specific[self.k :] + universal[self.k_universal :]
        injected = [item.entry for item in chosen]
        return Retrieval(chosen + rest, len(chosen), render_guidance(injected))

    async def rank_universal(self, items: list[RetrievedEntry]) -> list[RetrievedEntry]:
        """Universal entries (they all match every task) best first: by the mean reward of
        the episodes they were injected in, shrunk toward an optimistic 1.0 with the
        weight of `UNIVERSAL_PRIOR_EPISODES` episodes, so an entry not yet tried is tried
        before a tried one that did worse ("optimistic initial values", Sutton & Barto,
        Reinforcement Learning, 2nd ed., 2018, section 2.6); ties keep the match order.
        One counters query when there are two or more."""
        if len(items) < 2:
            return items
        counters = await self.store.counters_of([item.entry.entry_id for item in items])

        def value(item: RetrievedEntry) -> float:
            record = counters[item.entry.entry_id]
            prior = UNIVERSAL_PRIOR_EPISODES
            return (record.reward_sum_with + prior * 1.0) / (record.episodes_with + prior)

        return sorted(items, key=lambda item: -value(item))

    async def shuffled(self, retrieval: Retrieval, seed: str) -> Retrieval:
        """The shuffled-guidance control of `retrieval`: as many entries as it injected,
        drawn without replacement from every active entry of the audience (whatever their
        cue), in an order fixed by `seed` (the session id: the same episode draws the
        same entries). They are recorded as `shuffled` matches without similarity; the
        cue matches themselves are not recorded (they were not used)."""
        pool = await self.store.list_entries(status="active", audience=self.audience)
        pool.sort(key=lambda entry: entry.entry_id)
        rng = random.Random(hashlib.sha256(f"shuffled\x1f{seed}".encode()).digest())
        drawn = rng.sample(pool, min(retrieval.injected, len(pool)))
        items = [RetrievedEntry(entry, None, "shuffled") for entry in drawn]
        return Retrieval(items, len(items), render_guidance(drawn))


OUTCOME_KEY_SUFFIX = "#outcome"
"""Appended to the session id to key the outcome's bookkeeping (`after_reward`), which is
applied once like the retrieval's (keyed by the session id alone)."""


@dataclass
class _Episode:
    """What the hooks keep of one episode between `before_act` and `after_reward`."""

    injected: list[PlaybookEntry]
    without: list[PlaybookEntry] = field(default_factory=list)
    adopted: list[AdoptionEvent] | None = None


def session_draw(session_id: str, purpose: str) -> float:
    """A number in [0, 1) fixed by the session id and the purpose (SHA-256), for the
    loop's seeded choices (exploration)."""
    key = f"{purpose}\x1f{session_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64


class RetrievalHooks:
    """The episode hooks of a frozen run: retrieval and injection before the student
    acts, adoption after it acts, bookkeeping after the reward (no synthesis, no teacher
    guidance, no retirement). `LearningHooks` (agent_runner.learning.loop) builds the
    whole loop on top of them.

    `before_act` embeds `task_text(case)`, retrieves (`PlaybookRetriever`), and applies
    the retrieval's bookkeeping with `PlaybookStore.apply_episode` keyed by the session id:
    `retrieved` and `injected` counters and one `retrieval` trajectory event (also when
    nothing was found), together and at most once, so an episode played again (a
    provider outage, a resumed run, a claim taken over) is counted once. It returns the
    guidance text, the retrievals and the text's digest, which the runner puts in the
    student's prompt and the session trace. With `control="shuffled"` the injected entries
    are drawn at random from the memory instead (`PlaybookRetriever.shuffled`); with
    `explore_rate` > 0 that share of episodes (drawn from the session id) has its top
    entry withheld (`Retrieval.withholding_first`). With `tool_subsets`, the episode
    offers the student the subset its injected entries and category need.

    `after_act` returns the ids of the injected entries the steps follow (`adoption`),
    which the runner records as `crm_context.playbooks_adopted`. `after_reward` applies,
    keyed by the session id plus `OUTCOME_KEY_SUFFIX` and so also at most once, the
    counters of `outcome_increments` (the "with" sums of every injected entry, the
    "without" sums of the entry exploration withheld, `followed` for the adopted ones)
    and one `adoption` event per adopted entry. An episode replayed after its outcome
    was counted is not counted again, even if its replay follows other entries:
    the counters keep the first complete play, the trace records the last.

    The injected entries are kept in memory from `before_act` to `after_reward` (the
    version injected is the one judged), per session id; an episode that ends before
    `after_reward` (a harness error) leaves its few entries here until the hooks go."""

    mode: LearningMode = "frozen"

    def __init__(
        self,
        retriever: PlaybookRetriever,
        *,
        run_id: str,
        control: Literal["retrieval", "shuffled"] = "retrieval",
        explore_rate: float = 0.0,
        tool_subsets: ToolSubsets | None = None,
    ) -> None:
        self.retriever = retriever
        self.run_id = run_id
        self.control = control
        self.explore_rate = explore_rate
        self.tool_subsets = tool_subsets
        self._episodes: dict[str, _Episode] = {}
        self._vectors: dict[str, Sequence[float]] = {}

    async def task_vector(self, ctx: EpisodeContext) -> Sequence[float]:
        """The embedding of the episode's `task_text`, computed once per episode (kept
        until its `before_act` ends)."""
        vector = self._vectors.get(ctx.session_id)
        if vector is None:
            embedder = self.retriever.embedder
            [vector] = await asyncio.to_thread(embedder.embed, [task_text(ctx.case)])
            self._vectors[ctx.session_id] = vector
        return vector

    async def retrieve_for(self, ctx: EpisodeContext) -> Retrieval:
        """This episode's retrieval, after the control and exploration settings."""
        vector = await self.task_vector(ctx)
        retrieval = await self.retriever.retrieve(task_text(ctx.case), vector)
        if self.control == "shuffled":
            return await self.retriever.shuffled(retrieval, ctx.session_id)
        if self.explore_rate and session_draw(ctx.session_id, "explore") < self.explore_rate:
            return retrieval.withholding_first()
        return retrieval

    async def before_act(self, ctx: EpisodeContext) -> Guidance:
        try:
            retrieval = await self.retrieve_for(ctx)
        finally:
            self._vectors.pop(ctx.session_id, None)
        records = retrieval.records(self.retriever.audience)
        event = TrajectoryEvent(
            run_id=self.run_id,
            session_id=ctx.session_id,
            payload=RetrievalEvent(retrieved=records, injected_digest=retrieval.digest),
        )
        await self.retriever.store.apply_episode(
            ctx.session_id, retrieval.increments(), [event, *self.extra_retrieval_events(ctx)]
        )
        self._episodes[ctx.session_id] = _Episode(
            retrieval.injected_entries, [retrieval.withheld] if retrieval.withheld else []
        )
        if self.tool_subsets is not None:
            ctx.tool_subset = self.tool_subsets.subset(
                ctx.tools, ctx.case.task_category, retrieval.injected_entries
            )
        return Guidance(
            text=retrieval.text,
            retrievals=records,
            digest=retrieval.digest,
            learning_mode=self.mode,
        )

    def extra_retrieval_events(self, ctx: EpisodeContext) -> list[TrajectoryEvent]:
        """More events to record with the retrieval's (none here; the lane decision in
        `LearningHooks`)."""
        return []

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> ActReview:
        """The injected entries the episode's steps follow. Raises KeyError for a session
        whose `before_act` these hooks did not run."""
        episode = self._episodes[ctx.session_id]
        episode.adopted = adoptions(episode.injected, ctx.steps)
        return ActReview(adopted=[event.entry_id for event in episode.adopted])

    def outcome_events(self, ctx: EpisodeContext) -> list[TrajectoryEvent]:
        """Events recorded with the outcome's counters (adoptions here)."""
        episode = self._episodes[ctx.session_id]
        return [
            TrajectoryEvent(run_id=self.run_id, session_id=ctx.session_id, payload=event)
            for event in episode.adopted or []
        ]

    def take_outcome(
        self, ctx: EpisodeContext, reward: RewardRecord
    ) -> tuple[_Episode, dict[str, dict[CounterField, float]]]:
        """Forgets the episode and returns it with its outcome's counter increments
        (`outcome_increments`). Raises KeyError for a session whose `after_act` these
        hooks did not run."""
        episode = self._episodes.pop(ctx.session_id)
        if episode.adopted is None:
            raise KeyError(f"after_act did not run for {ctx.session_id}")
        increments = outcome_increments(
            episode.injected,
            [event.entry_id for event in episode.adopted],
            reward=reward.score,
            tokens=ctx.tokens_used,
            without=episode.without,
        )
        return episode, increments

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        """The outcome's bookkeeping (see the class). Raises KeyError for a session whose
        `after_act` these hooks did not run."""
        episode, increments = self.take_outcome(ctx, reward)
        events = [
            TrajectoryEvent(run_id=self.run_id, session_id=ctx.session_id, payload=event)
            for event in episode.adopted or []
        ]
        await self.record_outcome(ctx, reward, increments, events)

    async def record_outcome(
        self,
        ctx: EpisodeContext,
        reward: RewardRecord,
        increments: dict[str, dict[CounterField, float]],
        events: list[TrajectoryEvent],
    ) -> bool:
        """Applies the outcome's counters and events once per session (False when they
        were applied before); nothing to do when there are none."""
        if not increments and not events:
            return False
        return await self.retriever.store.apply_episode(
            ctx.session_id + OUTCOME_KEY_SUFFIX, increments, events
        )
