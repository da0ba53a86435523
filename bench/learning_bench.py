#!/usr/bin/env python
"""Benchmark of the learning loop's own cost per episode in frozen mode (issue 10).

The setup of `agent_runner_bench.py`: the CRM API, the verifier and the simulated LLM
(a fixed latency per model call, 1.5 s by default) as subprocesses on a fresh database,
the runner in this process through the code `crmbench run` uses. The playbook memory
holds the entries of config/playbooks/example.json plus `--entries` generated ones
(deterministic, realistic wording: a field of a CRM object given in a form the API
refuses, and what to send instead; some with cue patterns), embedded with the local
model and imported with `PlaybookStore.import_entries`, as `crmbench playbooks import`
does.

At each concurrency level the same cases are played twice in the same process, learning
off and learning frozen (`learning_hooks`, as `crmbench run --learning frozen` builds
them), and the loop's cost is reported two ways:

1. Directly: the wall time spent inside the hooks of each episode (`before_act`:
   embedding, search, pattern match, retrieval bookkeeping; `after_act`: the adoption
   check; `after_reward`: the outcome bookkeeping), measured by a wrapper around the
   hooks and timers on the embedder and the memory's calls (in this script: product code
   is not instrumented).
2. As the difference between the two runs: episode wall time, and episode time outside
   the model (wall minus model latency; guidance changes what the simulated student
   does, so the number of model calls, and with it the wall time, can differ).

Both are given in ms per episode and as a share of the frozen run's episode wall time,
next to the targets (< 50 ms, < 5%) with PASS/MISS. Also the one-time costs (loading
the local model, its first embedding, embedding the memory's cues, opening the hooks),
the CPU per episode of each process, and the runner process's full garbage collections
during each run (a 50-200 ms pause stalls every episode in flight, hooks included).

    python bench/learning_bench.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

With `--mode on` the second run of each level plays the whole loop (`learning_hooks` with
`LearningSettings(mode="on", teacher="simulated", k=--k)`, the simulated teacher, the
escalation agent on the simulated LLM and the write tools, as `crmbench run --learning on`
builds them in `agent_runner.learning.factory`), and the loop's own time per episode is
measured the same two ways, the teacher's time excluded: a stopwatch per episode
(`LoopClock`, exclusive time per region) on the hooks, on the supervision callbacks the
agent calls during its run (`review_plan`, `after_refusal`, `review_reply`), on the
embedder, the retrievals (both audiences), the memory's search, bookkeeping and merge,
triage, synthesis and the retirement check, and on the teacher's five calls, whose time
is reported apart. The in-run retirement check comes every `retirement.check_every`
episodes of a run's hooks (25), so it is also timed once after each run on the same
memory and given amortised. Printed also: the lane mix of each run, the teacher's calls,
what synthesis stored. The warm-up plays off and frozen in both modes (an oracle's
passes in mode on would enter the triage's track record).

    python bench/learning_bench.py --mode on --database-url postgresql://postgres@127.0.0.1:5432/postgres

Exit status is non-zero only when the benchmark could not run or episodes failed to
complete, never because a target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from agent_runner_bench import measure, services
from harness import REPO_ROOT, log, migrate_database, setup_database, table

from agent_runner.agents.base import Agent, AgentResult, EpisodeContext, Supervisor
from agent_runner.agents.baselines import OracleAgent
from agent_runner.agents.factory import build_agent
from agent_runner.learning.factory import build_escalation_agent
from agent_runner.learning.loop import LearningHooks, learning_hooks
from agent_runner.learning.memory import PlaybookStore
from agent_runner.learning.retrieval import RetrievalHooks
from agent_runner.learning.simulated_teacher import SimulatedTeacher
from agent_runner.learning.teacher import Teacher
from agent_runner.run.config import LearningSettings, RunConfig
from agent_runner.run.hooks import ActReview, EpisodeHooks, Guidance
from agent_runner.run.runner import select_cases
from agent_runner.simulated.policy import load_write_tools
from crmbench_contracts.cases import Case
from crmbench_contracts.playbooks import (
    Action,
    ArgumentRule,
    Cue,
    ExportedEntry,
    Level,
    PlaybookContent,
    PlaybookExport,
    SynthesisEvent,
)
from crmbench_contracts.rewards import RewardRecord
from crmbench_contracts.teaching import (
    Advice,
    OutcomeReview,
    SynthesisAnswer,
    TeacherReply,
    TeacherView,
    TriageAnswer,
)
from crmbench_contracts.traces import StepTrace
from crmbench_corpus.store import load_cases
from crmbench_learning.embeddings import Embedder, Vector, make_embedder
from crmbench_llm.types import ToolCall

HOOK_MS_TARGET = 50.0
SHARE_TARGET = 0.05
EXAMPLE_MEMORY = REPO_ROOT / "config" / "playbooks" / "example.json"
EMBED_BATCH = 32
T = TypeVar("T")
P = ParamSpec("P")

# ---------------------------------------------------------------------------- the memory


@dataclass(frozen=True)
class Field:
    """A field of a CRM object the user states, and the tool argument it goes into."""

    obj: str
    name: str
    argument: str
    kind: str
    """"enum", "date", "amount", "reference" or "contact"."""
    write_tools: tuple[str, ...]
    read_tool: str
    canonical: str
    """How the CRM wants the value, in words."""
    pattern: str | None = None
    """The argument's checkable form (`ArgumentRule.pattern`), when there is one."""


FIELDS = (
    Field(
        "opportunity",
        "stage",
        "stage",
        "enum",
        ("create_new_opportunity", "modify_opportunity"),
        "opportunity_details",
        "one of Prospecting, Qualification, Proposal, Negotiation, Closed-Won, Closed-Lost",
        "Prospecting|Qualification|Proposal|Negotiation|Closed-Won|Closed-Lost",
    ),
    Field(
        "quote",
        "status",
        "status",
        "enum",
        ("create_quote", "modify_quote"),
        "quote_details",
        "one of Draft, Sent, Approved, Rejected, Canceled",
        "Draft|Sent|Approved|Rejected|Canceled",
    ),
    Field(
        "client",
        "status",
        "status",
        "enum",
        ("create_new_client", "modify_client"),
        "client_search",
        "Active, Inactive or Prospect",
        "Active|Inactive|Prospect",
    ),
    Field(
        "client",
        "industry",
        "industry",
        "enum",
        ("create_new_client", "modify_client"),
        "client_search",
        "an industry from the CRM's list, capitalised (Healthcare, Manufacturing, Retail...)",
    ),
    Field(
        "contract",
        "status",
        "status",
        "enum",
        ("create_contract",),
        "contract_search",
        "Pending, Active or Expired",
        "Pending|Active|Expired",
    ),
    Field(
        "opportunity",
        "close date",
        "close_date",
        "date",
        ("create_new_opportunity", "modify_opportunity"),
        "opportunity_details",
        "an ISO date, YYYY-MM-DD",
        r"\d{4}-\d{2}-\d{2}",
    ),
    Field(
        "quote",
        "valid-until date",
        "valid_until",
        "date",
        ("create_quote", "modify_quote"),
        "quote_details",
        "an ISO date, YYYY-MM-DD",
        r"\d{4}-\d{2}-\d{2}",
    ),
    Field(
        "contract",
        "start date",
        "start_date",
        "date",
        ("create_contract",),
        "contract_search",
        "an ISO date, YYYY-MM-DD",
        r"\d{4}-\d{2}-\d{2}",
    ),
    Field(
        "opportunity",
        "amount",
        "amount",
        "amount",
        ("create_new_opportunity", "modify_opportunity"),
        "opportunity_details",
        "a plain JSON number",
        r"\d+(\.\d{1,2})?",
    ),
    Field(
        "quote",
        "amount",
        "amount",
        "amount",
        ("create_quote", "modify_quote"),
        "quote_details",
        "a plain JSON number",
        r"\d+(\.\d{1,2})?",
    ),
    Field(
        "contract",
        "value",
        "value",
        "amount",
        ("create_contract",),
        "contract_search",
        "a plain JSON number",
        r"\d+(\.\d{1,2})?",
    ),
    Field(
        "opportunity",
        "name",
        "opportunity_id",
        "reference",
        ("modify_opportunity", "delete_opportunity"),
        "opportunity_search",
        "the id of the one opportunity the name identifies",
    ),
    Field(
        "client",
        "name",
        "client_id",
        "reference",
        ("create_new_opportunity", "create_new_contact", "modify_client"),
        "client_search",
        "the id of the one client the name identifies",
    ),
    Field(
        "contact",
        "name",
        "contact_id",
        "reference",
        ("modify_contact",),
        "contact_search",
        "the id of the one contact the name identifies",
    ),
    Field(
        "quote",
        "number",
        "quote_id",
        "reference",
        ("modify_quote", "cancel_quote", "delete_quote"),
        "quote_search",
        "the id of the quote the number or prefix identifies",
    ),
    Field(
        "client",
        "email",
        "email",
        "contact",
        ("create_new_client", "modify_client"),
        "client_search",
        "a trimmed address in lower case",
        r"[^A-Z\s]+@[^A-Z\s]+",
    ),
    Field(
        "contact",
        "email",
        "email",
        "contact",
        ("create_new_contact", "modify_contact"),
        "contact_search",
        "a trimmed address in lower case",
        r"[^A-Z\s]+@[^A-Z\s]+",
    ),
    Field(
        "client",
        "phone",
        "phone",
        "contact",
        ("create_new_client", "modify_client"),
        "client_search",
        "+1-555-NNNN, digits and dashes only",
        r"\+1-555-\d{4}",
    ),
    Field(
        "contact",
        "phone",
        "phone",
        "contact",
        ("create_new_contact", "modify_contact"),
        "contact_search",
        "+1-555-NNNN, digits and dashes only",
        r"\+1-555-\d{4}",
    ),
)


@dataclass(frozen=True)
class Slip:
    """A way users state a field that the CRM refuses or misreads; `action` tells the
    student what to do ({field}, {obj}, {canonical}, {read_tool}, {write_tool})."""

    phrase: str
    action: str
    effect: str
    cue_pattern: str | None


SLIPS: dict[str, tuple[Slip, ...]] = {
    "enum": (
        Slip(
            "in lower or upper case",
            "Write the {field} exactly as the CRM spells it ({canonical}) in {write_tool}.",
            "{write_tool} accepts the {field} on the first call.",
            None,
        ),
        Slip(
            "in other words (a synonym or an abbreviation)",
            "Map the user's word to {canonical}; if two values fit, ask instead of guessing.",
            "No unknown-value refusals for the {obj} {field}.",
            None,
        ),
        Slip(
            "inside quotes with spaces around it",
            "Trim the spaces and drop the quotes before calling {write_tool}: {canonical}.",
            "The stored {field} has no stray spaces.",
            r"\"\s+\w|\w\s+\"",
        ),
    ),
    "date": (
        Slip(
            "as a relative date such as 'next Friday' or 'end of month'",
            "Work out the calendar date from today and send {canonical} to {write_tool}.",
            "The {obj}'s {field} is the day the user meant.",
            r"\b(next|this|end of (the )?)\s*(week|month|quarter|monday|tuesday|wednesday|"
            r"thursday|friday)\b",
        ),
        Slip(
            "day first, as in 17/12/2025",
            "Read day/month/year and send {canonical}; a day above 12 settles the order.",
            "No date refusals and no swapped day and month.",
            r"\b\d{1,2}/\d{1,2}/\d{2,4}\b",
        ),
        Slip(
            "with the month's name, as in 'December 17, 2025'",
            "Convert the month name to its number and send {canonical}.",
            "{write_tool} accepts the {field} on the first call.",
            r"\b(january|february|march|april|may|june|july|august|september|october|"
            r"november|december)\s+\d{1,2}\b",
        ),
    ),
    "amount": (
        Slip(
            "with a currency sign or thousands separators, as in $45,000",
            'Send the {field} as {canonical}: 45000, not "$45,000"; keep cents as decimals.',
            "No refusals for a malformed {field}.",
            r"\$\s?\d|\d,\d{3}",
        ),
        Slip(
            "in shorthand such as 45k or 1.2m",
            "Expand k to thousands and m to millions and send {canonical}.",
            "The stored {field} is the one the user meant, not 45 or 1.2.",
            r"\b\d+(\.\d+)?\s?[km]\b",
        ),
        Slip(
            "in words, as in 'forty thousand'",
            "Turn the words into digits and send {canonical}; ask when the words are unclear.",
            "The stored {field} matches the user's words.",
            r"\b(thousand|million)\b",
        ),
    ),
    "reference": (
        Slip(
            "with a typo or a letter missing",
            "Look the {obj} up with {read_tool} first and use {canonical}; never create one.",
            "No not-found refusals and no duplicate {obj} records.",
            None,
        ),
        Slip(
            "as only part of a name",
            "Search with {read_tool}; when several {obj} records match, ask which one.",
            "No write to the wrong {obj}.",
            None,
        ),
        Slip(
            "as a name two records share",
            "List the matches with {read_tool} and ask the user to choose before writing.",
            "No write to the wrong {obj} when names collide.",
            r"\b(duplicate|the other one|both)\b",
        ),
    ),
    "contact": (
        Slip(
            "with capitals or spaces in it",
            "Send the {field} as {canonical} to {write_tool}.",
            "The stored {field} is normalised and searchable.",
            r"[A-Z][^@\s]*@",
        ),
        Slip(
            "in another format, with brackets, dots or spaces",
            "Rewrite the {field} as {canonical} before {write_tool}.",
            "{write_tool} accepts the {field} on the first call.",
            r"\(\d{3}\)|\d{3}\.\d{4}",
        ),
    ),
}

CUE_WORDINGS = (
    "The user gives the {obj}'s {field} {slip}.",
    "A request to {verb} a {obj} states the {field} {slip}.",
    "When asked to {verb} a {obj}, the {field} arrives {slip}.",
    "Task to {verb} {article} {obj} where the user's {field} is written {slip}.",
    "The {obj} {field} in the user's message comes {slip}.",
)
ACTION_ENDINGS = (
    "",
    " Check this before the first write.",
    " Do it silently.",
    "",
    " Say what you changed in the reply.",
)
LEVELS: tuple[Level, ...] = ("task", "domain", "task", "workflow", "domain")


def _slips(field: Field) -> tuple[Slip, ...]:
    # Phones and emails share the "contact" kind: one slip each.
    slips = SLIPS[field.kind]
    if field.kind == "contact":
        return slips[:1] if field.name == "email" else slips[1:]
    return slips


def generated_contents(count: int, seed: int = 10) -> list[PlaybookContent]:
    """`count` distinct entries (at most len(FIELDS x slips x CUE_WORDINGS)), in a seeded
    order: every (field, slip) in each cue wording; the first wording carries the slip's
    cue pattern, one entry in ten is the teacher's."""
    combos = [(f, s) for f in FIELDS for s in _slips(f)]
    made: list[PlaybookContent] = []
    for wording, (field, slip) in itertools.product(range(len(CUE_WORDINGS)), combos):
        write_tool = field.write_tools[wording % len(field.write_tools)]
        words = {
            "obj": field.obj,
            "field": field.name,
            "canonical": field.canonical,
            "read_tool": field.read_tool,
            "write_tool": write_tool,
        }
        verb = "create" if write_tool.startswith("create") else "update"
        cue = CUE_WORDINGS[wording].format(
            slip=slip.phrase, verb=verb, article="an" if field.obj[0] in "aeiou" else "a", **words
        )
        rules = [
            ArgumentRule(
                tool=tool,
                argument=field.argument,
                rule=f"{field.canonical}",
                pattern=field.pattern,
            )
            for tool in field.write_tools
        ]
        made.append(
            PlaybookContent(
                audience="teacher" if len(made) % 10 == 9 else "student",
                level=LEVELS[wording],
                cue=Cue(
                    text=cue,
                    patterns=[slip.cue_pattern] if wording == 0 and slip.cue_pattern else [],
                ),
                action=Action(
                    text=slip.action.format(**words) + ACTION_ENDINGS[wording],
                    tools=[field.read_tool, *field.write_tools]
                    if field.kind == "reference"
                    else list(field.write_tools),
                    argument_rules=rules,
                ),
                expected_effect=slip.effect.format(**words),
            )
        )
    if count > len(made):
        raise SystemExit(f"--entries: at most {len(made)} generated entries")
    random.Random(seed).shuffle(made)
    return made[:count]


def exported(contents: Sequence[PlaybookContent], start: datetime) -> list[ExportedEntry]:
    """New active entries (version 1, no vector yet), created a second apart."""
    entries = []
    for i, content in enumerate(contents):
        now = start + timedelta(seconds=i)
        entries.append(ExportedEntry.new(content, now))
    return entries


def embed_all(document: PlaybookExport, embedder: Embedder) -> float:
    """Adds a vector of every version's cue text (as `crmbench playbooks import` does);
    returns the seconds it took."""
    versions = [(item, version) for item in document.entries for version in item.versions]
    started = time.perf_counter()
    for first in range(0, len(versions), EMBED_BATCH):
        batch = versions[first : first + EMBED_BATCH]
        vectors = embedder.embed([version.cue.text for _, version in batch])
        for (item, version), vector in zip(batch, vectors, strict=True):
            item.embeddings.setdefault(embedder.name, {})[version.version] = vector
    return time.perf_counter() - started


async def fill_memory(database_url: str, document: PlaybookExport, embedder: Embedder) -> str:
    """Imports `document`; returns the search backend the memory uses."""
    store = await PlaybookStore.connect(
        database_url, embedder=embedder.name, dimension=embedder.dimensions, pool_size=1
    )
    try:
        summary = await store.import_entries(document)
        log(f"memory: {summary}")
        return store.backend
    finally:
        await store.close()


# ---------------------------------------------------------------------------- timing

CURRENT: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "bench_hook_timings", default=None
)
"""The timings of the episode whose hook is running (the task's context; copied into
`asyncio.to_thread`, so the embedder's thread adds to it too)."""


def _add(part: str, seconds: float) -> None:
    timings = CURRENT.get()
    if timings is not None:
        timings[part] = timings.get(part, 0.0) + seconds * 1000


def timed(
    part: str, call: Callable[P, Coroutine[Any, Any, T]]
) -> Callable[P, Coroutine[Any, Any, T]]:
    """`call`, adding its time to the running episode's timings under `part`."""

    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        try:
            return await call(*args, **kwargs)
        finally:
            _add(part, time.perf_counter() - started)

    return wrapper


class TimedEmbedder:
    """An embedder that adds its calls' time to the running episode's timings."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimensions = inner.dimensions

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        started = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            _add("embed", time.perf_counter() - started)


class TimedHooks:
    """Frozen-mode hooks with a stopwatch: each episode's time inside each hook, and
    inside the embedder and the memory's calls the hooks make (ms, by session id)."""

    def __init__(self, inner: RetrievalHooks) -> None:
        self.inner = inner
        retriever = inner.retriever
        store = retriever.store
        retriever.embedder = TimedEmbedder(retriever.embedder)
        # Instance attributes shadow the methods: the hooks call these timed versions.
        retriever.retrieve = timed("retrieve", retriever.retrieve)  # type: ignore[method-assign]
        store.search = timed("search", store.search)  # type: ignore[method-assign]
        store.apply_episode = timed("bookkeeping", store.apply_episode)  # type: ignore[method-assign]
        self.timings: dict[str, dict[str, float]] = {}
        self.injected: dict[str, int] = {}
        self.adopted: dict[str, int] = {}

    async def _run(self, session_id: str, hook: str, call: Awaitable[T]) -> T:
        timings = self.timings.setdefault(session_id, {})
        token = CURRENT.set(timings)
        started = time.perf_counter()
        try:
            return await call
        finally:
            timings[hook] = timings.get(hook, 0.0) + (time.perf_counter() - started) * 1000
            CURRENT.reset(token)

    async def before_act(self, ctx: EpisodeContext) -> Guidance:
        guidance = await self._run(ctx.session_id, "before_act", self.inner.before_act(ctx))
        self.injected[ctx.session_id] = sum(r.injected for r in guidance.retrievals)
        return guidance

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> ActReview:
        review = await self._run(ctx.session_id, "after_act", self.inner.after_act(ctx, result))
        self.adopted[ctx.session_id] = len(review.adopted)
        return review

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        await self._run(
            ctx.session_id, "after_reward", self.inner.after_reward(ctx, result, reward)
        )

    def per_episode(self) -> list[dict[str, float]]:
        """Per episode, in the order they started (ms): total, and its parts: embed,
        search, patterns (the rest of retrieval: the cue-pattern query and match, the
        merge), bookkeeping (both `apply_episode` calls), adoption (`after_act`), other
        (building the records)."""
        rows = []
        for t in self.timings.values():
            total = t.get("before_act", 0.0) + t.get("after_act", 0.0) + t.get("after_reward", 0.0)
            retrieve = t.get("retrieve", 0.0)
            embed, search = t.get("embed", 0.0), t.get("search", 0.0)
            bookkeeping, adoption = t.get("bookkeeping", 0.0), t.get("after_act", 0.0)
            rows.append(
                {
                    "total": total,
                    "embed": embed,
                    "search": search,
                    "patterns": max(retrieve - embed - search, 0.0),
                    "bookkeeping": bookkeeping,
                    "adoption": adoption,
                    "other": max(total - retrieve - bookkeeping - adoption, 0.0),
                }
            )
        return rows


@dataclass
class HookSetup:
    """The frozen runs' hooks, kept for their timings, and the time to build them."""

    settings: LearningSettings
    hooks: list[TimedHooks]
    open_ms: list[float]

    @contextlib.asynccontextmanager
    async def __call__(self, pool: asyncpg.Pool, run_id: str) -> AsyncIterator[EpisodeHooks]:
        started = time.perf_counter()
        async with learning_hooks(self.settings, pool, run_id=run_id) as hooks:
            assert isinstance(hooks, RetrievalHooks)
            self.open_ms.append((time.perf_counter() - started) * 1000)
            timed_hooks = TimedHooks(hooks)
            self.hooks.append(timed_hooks)
            yield timed_hooks


# ---------------------------------------------------------------------------- mode on

SEALED = ("supervision", "synthesis", "retirement")
"""Regions whose inner calls stay in their own time (as `region:call` sub-parts), so
that, say, the embedding of synthesis's candidates is not counted as retrieval's."""
TEACHER = "teacher"
TEACHER_CALLS = ("triage", "review_plan", "guide_step", "review_outcome", "synthesize")


@dataclass
class _Frame:
    """An open region of a `LoopClock`: its name, when it started, its children's time
    (s, perf_counter)."""

    name: str
    started: float
    children: float = 0.0


class LoopClock:
    """One episode's stopwatch in mode on: exclusive wall time (ms) per region, nested
    regions taken out of their parent's time. The teacher's calls are always their own
    region, so every other region's time is net of the teacher's."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.teacher_calls: dict[str, int] = {}
        self.entered: dict[str, int] = {}
        """Times each region was entered (by its recorded name)."""
        self._stack: list[_Frame] = []
        """The open regions, innermost last."""

    def _name(self, part: str) -> str:
        if part == TEACHER:
            return part
        sealed = next((frame.name for frame in self._stack if frame.name in SEALED), None)
        return part if sealed is None else f"{sealed}:{part}"

    @contextlib.contextmanager
    def region(self, part: str) -> Iterator[None]:
        name = self._name(part)
        self.entered[name] = self.entered.get(name, 0) + 1
        frame = _Frame(name, time.perf_counter())
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = time.perf_counter() - frame.started
            self.ms[name] = self.ms.get(name, 0.0) + (elapsed - frame.children) * 1000
            if self._stack:
                self._stack[-1].children += elapsed

    def parts(self) -> dict[str, float]:
        """The loop's time by part (ms), teacher excluded, and the teacher's time:
        total, embed, search, patterns (the rest of retrieval: the cue-pattern query and
        match, the merge; both audiences), triage (the track record and the rule),
        bookkeeping (`apply_episode` outside synthesis, and `after_reward`'s own time:
        the transaction and the track record), adoption (`after_act`), supervision (the
        three callbacks), synthesis (gates, embedding the accepted cues, `add_or_merge`,
        its bookkeeping and event; synthesis_embed is its embedding alone), retirement
        (the in-run check, when `check_every` comes round), other (`before_act`'s own
        time: the lane's record, the guidance), teacher."""
        ms = self.ms
        synthesis = sum(v for k, v in ms.items() if k.split(":")[0] == "synthesis")
        row = {
            "embed": ms.get("embed", 0.0),
            "search": ms.get("search", 0.0),
            "patterns": ms.get("retrieve", 0.0),
            "triage": ms.get("triage", 0.0),
            "bookkeeping": ms.get("bookkeeping", 0.0) + ms.get("after_reward", 0.0),
            "adoption": ms.get("after_act", 0.0),
            "supervision": sum(v for k, v in ms.items() if k.split(":")[0] == "supervision"),
            "synthesis": synthesis,
            "synthesis_embed": ms.get("synthesis:embed", 0.0),
            "retirement": sum(v for k, v in ms.items() if k.split(":")[0] == "retirement"),
            "other": ms.get("before_act", 0.0),
        }
        total = sum(v for k, v in row.items() if k != "synthesis_embed")
        return {"total": total, **row, TEACHER: ms.get(TEACHER, 0.0)}


CLOCK: contextvars.ContextVar[LoopClock | None] = contextvars.ContextVar(
    "bench_loop_clock", default=None
)
"""The clock of the episode whose loop code is running (the task's context; copied into
`asyncio.to_thread`, so the embedder's thread adds to it too)."""


@contextlib.contextmanager
def region(part: str) -> Iterator[None]:
    clock = CLOCK.get()
    if clock is None:
        yield
        return
    with clock.region(part):
        yield


def clocked(
    part: str, call: Callable[P, Coroutine[Any, Any, T]]
) -> Callable[P, Coroutine[Any, Any, T]]:
    """`call`, timed as `part` of the running episode's clock."""

    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with region(part):
            return await call(*args, **kwargs)

    return wrapper


class ClockedEmbedder:
    """An embedder whose calls are the running episode's `embed` region."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimensions = inner.dimensions

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        with region("embed"):
            return self.inner.embed(texts)


class ClockedTeacher:
    """The teacher with a stopwatch on its five calls (the `teacher` region, counted per
    call), so the loop's time can be given without the teacher's."""

    def __init__(self, inner: Teacher) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = inner.model

    async def _call(self, call: str, view: TeacherView) -> Any:
        clock = CLOCK.get()
        if clock is not None:
            clock.teacher_calls[call] = clock.teacher_calls.get(call, 0) + 1
        with region(TEACHER):
            return await getattr(self.inner, call)(view)

    async def triage(self, view: TeacherView) -> TeacherReply[TriageAnswer]:
        return cast(TeacherReply[TriageAnswer], await self._call("triage", view))

    async def review_plan(self, view: TeacherView) -> TeacherReply[Advice]:
        return cast(TeacherReply[Advice], await self._call("review_plan", view))

    async def guide_step(self, view: TeacherView) -> TeacherReply[Advice]:
        return cast(TeacherReply[Advice], await self._call("guide_step", view))

    async def review_outcome(self, view: TeacherView) -> TeacherReply[OutcomeReview]:
        return cast(TeacherReply[OutcomeReview], await self._call("review_outcome", view))

    async def synthesize(self, view: TeacherView) -> TeacherReply[SynthesisAnswer]:
        return cast(TeacherReply[SynthesisAnswer], await self._call("synthesize", view))

    async def aclose(self) -> None:
        await self.inner.aclose()


class ClockedSupervisor:
    """An episode's `Supervision` with its three callbacks timed (`supervision` region)
    on the episode's clock: the agent calls them outside the hooks."""

    def __init__(self, inner: Supervisor, clock: LoopClock) -> None:
        self.inner = inner
        self.clock = clock

    async def _timed(self, call: Awaitable[str | None]) -> str | None:
        token = CLOCK.set(self.clock)
        try:
            with self.clock.region("supervision"):
                return await call
        finally:
            CLOCK.reset(token)

    async def review_plan(self, ctx: EpisodeContext, calls: list[ToolCall]) -> str | None:
        return await self._timed(self.inner.review_plan(ctx, calls))

    async def after_refusal(self, ctx: EpisodeContext, step: StepTrace) -> str | None:
        return await self._timed(self.inner.after_refusal(ctx, step))

    async def review_reply(self, ctx: EpisodeContext, reply: str) -> str | None:
        return await self._timed(self.inner.review_reply(ctx, reply))


class ClockedLoopHooks:
    """Mode-on hooks (`LearningHooks`) with a stopwatch per episode (`LoopClock`, by
    session id): the three hooks, the supervision callbacks, and inside them the
    embedder, the retrievals, the memory's search, bookkeeping and merge, triage,
    synthesis, the retirement check and the teacher's calls. Also each episode's lane,
    entries injected and adopted, and what synthesis stored or refused."""

    def __init__(self, inner: LearningHooks) -> None:
        self.inner = inner
        store = inner.store
        retrievers = [inner.retriever]
        if inner.teacher_retriever is not None:
            retrievers.append(inner.teacher_retriever)
        embedder = ClockedEmbedder(inner.retriever.embedder)
        for retriever in retrievers:
            retriever.embedder = embedder
            # Instance attributes shadow the methods: the hooks call these timed versions.
            retriever.retrieve = clocked("retrieve", retriever.retrieve)  # type: ignore[method-assign]
        store.search = clocked("search", store.search)  # type: ignore[method-assign]
        store.apply_episode = clocked("bookkeeping", store.apply_episode)  # type: ignore[method-assign]
        store.add_or_merge = clocked("merge", store.add_or_merge)  # type: ignore[method-assign]
        inner._lane = clocked("triage", inner._lane)  # type: ignore[method-assign]
        inner._maybe_retire = clocked("retirement", inner._maybe_retire)  # type: ignore[method-assign]
        synthesize = inner.synthesize

        async def synthesis(
            ctx: EpisodeContext, reward: RewardRecord, learning: Any, result: AgentResult
        ) -> SynthesisEvent | None:
            with region("synthesis"):
                event = await synthesize(ctx, reward, learning, result)
            self.synthesis.append(event)
            return event

        inner.synthesize = synthesis  # type: ignore[method-assign]
        self.clocks: dict[str, LoopClock] = {}
        self.lanes: dict[str, str] = {}
        self.injected: dict[str, int] = {}
        self.adopted: dict[str, int] = {}
        self.synthesis: list[SynthesisEvent | None] = []

    async def _run(self, session_id: str, hook: str, call: Awaitable[T]) -> T:
        clock = self.clocks.setdefault(session_id, LoopClock())
        token = CLOCK.set(clock)
        try:
            with clock.region(hook):
                return await call
        finally:
            CLOCK.reset(token)

    async def before_act(self, ctx: EpisodeContext) -> Guidance:
        guidance = await self._run(ctx.session_id, "before_act", self.inner.before_act(ctx))
        if ctx.supervisor is not None:
            ctx.supervisor = ClockedSupervisor(ctx.supervisor, self.clocks[ctx.session_id])
        self.lanes[ctx.session_id] = guidance.lane.lane if guidance.lane else "none"
        self.injected[ctx.session_id] = sum(
            r.injected for r in guidance.retrievals if r.audience == "student"
        )
        return guidance

    async def after_act(self, ctx: EpisodeContext, result: AgentResult) -> ActReview:
        review = await self._run(ctx.session_id, "after_act", self.inner.after_act(ctx, result))
        self.adopted[ctx.session_id] = len(review.adopted)
        return review

    async def after_reward(
        self, ctx: EpisodeContext, result: AgentResult, reward: RewardRecord
    ) -> None:
        await self._run(
            ctx.session_id, "after_reward", self.inner.after_reward(ctx, result, reward)
        )

    def per_episode(self) -> list[dict[str, float]]:
        """Per episode, in the order they started: `LoopClock.parts` (ms)."""
        return [clock.parts() for clock in self.clocks.values()]

    def entered(self, name: str) -> float:
        """Times the region `name` was entered per episode, mean (embed: the embedder's
        calls for retrieval; search: the memory's searches)."""
        return sum(c.entered.get(name, 0) for c in self.clocks.values()) / (len(self.clocks) or 1)

    def teacher_calls(self) -> dict[str, float]:
        """The teacher's calls per episode, mean, by call."""
        n = len(self.clocks) or 1
        return {
            call: sum(c.teacher_calls.get(call, 0) for c in self.clocks.values()) / n
            for call in TEACHER_CALLS
        }


@dataclass
class LoopSetup:
    """The mode-on runs' hooks, built as `crmbench run --learning on` with the simulated
    teacher builds them (`agent_runner.learning.factory.run_learning_hooks`): the
    simulated teacher (behind `ClockedTeacher`), the escalation agent on the simulated
    LLM, the write tools. Kept for their timings, with the time to build them, the
    memory's size when the run starts, and one retirement check timed after the run."""

    settings: LearningSettings
    simulated_url: str
    hooks: list[ClockedLoopHooks]
    open_ms: list[float]
    entries_at_start: list[int]
    retirement_checks: list[dict[str, float]]

    @contextlib.asynccontextmanager
    async def __call__(self, pool: asyncpg.Pool, run_id: str) -> AsyncIterator[EpisodeHooks]:
        config = RunConfig(
            agent="simulated", learning=self.settings, simulated={"url": self.simulated_url}
        )
        teacher = ClockedTeacher(SimulatedTeacher.from_yaml())
        escalation = build_escalation_agent(config, self.simulated_url)
        try:
            started = time.perf_counter()
            async with learning_hooks(
                self.settings,
                pool,
                run_id=run_id,
                teacher=teacher,
                escalation_agent=escalation,
                write_tools=load_write_tools(),
            ) as hooks:
                assert isinstance(hooks, LearningHooks)
                self.open_ms.append((time.perf_counter() - started) * 1000)
                self.entries_at_start.append(len(await hooks.store.list_entries(status="active")))
                clocked_hooks = ClockedLoopHooks(hooks)
                self.hooks.append(clocked_hooks)
                yield clocked_hooks
                # The run's episodes are done (`check_every` episodes apart, the in-run
                # check may not have come round): one check, timed, on the same memory.
                entries = len(await hooks.store.list_entries(status="active"))
                started = time.perf_counter()
                retired = await hooks.retire_entries()
                self.retirement_checks.append(
                    {
                        "ms": (time.perf_counter() - started) * 1000,
                        "active_entries": entries,
                        "retired": len(retired),
                    }
                )
        finally:
            await teacher.aclose()
            if escalation is not None:
                await escalation.aclose()


# ---------------------------------------------------------------------------- runs


class FullCollections:
    """The runner process's full (generation 2) garbage collections and their pauses:
    with the corpus and the model in memory they take 50-200 ms, stall the event loop,
    and land in whatever an episode is awaiting, hooks included."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses_ms.append((time.perf_counter() - self._started) * 1000)

    def take(self) -> list[float]:
        taken, self.pauses_ms = self.pauses_ms, []
        return [round(pause, 1) for pause in taken]


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def time_table(comparisons: list[dict[str, Any]], prefix: str, *, teacher: bool = False) -> str:
    """Per level, the time measured inside the loop (keys `{prefix}_ms_*` and
    `{prefix}_share`): mean, p50, p95, max, first wave, rest, share of episode wall time;
    with `teacher`, the simulated teacher's own ms too."""
    header = (
        "conc",
        "episodes",
        f"{prefix} ms mean",
        "p50",
        "p95",
        "max",
        "first wave",
        "rest",
        "share of wall",
        *(("teacher ms",) if teacher else ()),
    )
    rows: list[tuple[str, ...]] = [header]
    for c in comparisons:
        rows.append(
            (
                str(c["concurrency"]),
                str(c["episodes"]),
                *(
                    f"{c[f'{prefix}_ms_{stat}']:.1f}"
                    for stat in ("mean", "p50", "p95", "max", "first_wave", "rest")
                ),
                f"{c[f'{prefix}_share']:.2%}",
                *((f"{c['teacher_ms_mean']:.2f}",) if teacher else ()),
            )
        )
    return table(rows, right=range(len(header)))


def print_off_vs(comparisons: list[dict[str, Any]], mode: str, one_time: dict[str, Any]) -> None:
    """The off run against the `mode` run (frozen or on) of each level: wall time, model
    calls, time outside the model, passes, CPU per service, full collections; then the
    one-time costs."""
    print(f"Off vs {mode}, same cases (ms per episode, mean):")
    header_runs = (
        "conc",
        "wall off",
        f"wall {mode}",
        "diff",
        f"model calls off/{mode}",
        "outside model off",
        mode,
        "diff",
        f"passed off/{mode}",
    )
    rows = [header_runs]
    for c in comparisons:
        rows.append(
            (
                str(c["concurrency"]),
                f"{c['wall_ms_off']:.0f}",
                f"{c[f'wall_ms_{mode}']:.0f}",
                f"{c['wall_diff_ms']:+.0f}",
                f"{c['model_calls_off']:.2f} / {c[f'model_calls_{mode}']:.2f}",
                f"{c['outside_model_ms_off']:.0f}",
                f"{c[f'outside_model_ms_{mode}']:.0f}",
                f"{c['outside_model_diff_ms']:+.0f}",
                f"{c['passed_off']} / {c[f'passed_{mode}']}",
            )
        )
    print(table(rows, right=range(len(header_runs))))
    print(f"CPU ms per episode, off -> {mode}:")
    for c in comparisons:
        split = "  ".join(
            f"{name} {c['cpu_ms_off'][name]:.0f} -> {c[f'cpu_ms_{mode}'][name]:.0f}"
            for name in c[f"cpu_ms_{mode}"]
        )
        print(f"  c={c['concurrency']:<3} {split}")
    print("Full garbage collections in the runner process during the run (pause ms):")
    for c in comparisons:
        print(f"  c={c['concurrency']:<3} off {c['full_gc_off']}  {mode} {c[f'full_gc_{mode}']}")
    print()
    print(
        f"One-time: model load {one_time['model_load_ms']:.0f} ms, first embedding "
        f"{one_time['first_embed_ms']:.0f} ms, cues embedded at "
        f"{one_time['embed_cues_ms_per_text']:.1f} ms per text, hooks opened in "
        f"{one_time['hooks_open_ms']:.1f} ms per run (model cached)"
    )
    print()


def compare(off: dict[str, Any], frozen: dict[str, Any], timed_hooks: TimedHooks) -> dict[str, Any]:
    """One concurrency level's figures: hook time measured directly, and the differences
    between the runs (ms per episode; shares of the frozen run's mean episode wall time)."""
    rows = timed_hooks.per_episode()
    wall = frozen["episode_wall_ms_mean"]
    totals = [r["total"] for r in rows]
    parts = {part: round(mean([r[part] for r in rows]), 2) for part in rows[0]} if rows else {}
    wall_diff = wall - off["episode_wall_ms_mean"]
    outside_off = off["episode_wall_ms_mean"] - off["agent_ms_mean"]
    outside_frozen = wall - frozen["agent_ms_mean"]
    injected = list(timed_hooks.injected.values())
    return {
        "concurrency": frozen["concurrency"],
        "episodes": frozen["episodes"],
        "hook_ms_mean": round(mean(totals), 2),
        "hook_ms_p50": round(statistics.median(totals), 2) if totals else 0.0,
        "hook_ms_p95": round(p95(totals), 2),
        "hook_ms_max": round(max(totals, default=0.0), 2),
        "hook_share": round(mean(totals) / wall, 5) if wall else None,
        # The first wave of episodes finds the memory's search cache cold (the "arrays"
        # backend loads it at a run's first searches, once per episode in flight).
        "hook_ms_first_wave": round(mean(totals[: frozen["concurrency"]]), 2),
        "hook_ms_rest": round(mean(totals[frozen["concurrency"] :]), 2),
        "cpu_ms_off": off["cpu_ms_per_episode"],
        "cpu_ms_frozen": frozen["cpu_ms_per_episode"],
        "parts_ms_mean": parts,
        "per_episode_ms": [{k: round(v, 2) for k, v in r.items()} for r in rows],
        "injected_mean": round(mean(injected), 2),
        "adopted_mean": round(mean(list(timed_hooks.adopted.values())), 2),
        "wall_ms_off": off["episode_wall_ms_mean"],
        "wall_ms_frozen": wall,
        "wall_diff_ms": round(wall_diff, 1),
        "wall_diff_share": round(wall_diff / wall, 4) if wall else None,
        "model_calls_off": off["model_calls_mean"],
        "model_calls_frozen": frozen["model_calls_mean"],
        "outside_model_ms_off": round(outside_off, 1),
        "outside_model_ms_frozen": round(outside_frozen, 1),
        "outside_model_diff_ms": round(outside_frozen - outside_off, 1),
        "outside_model_diff_share": round((outside_frozen - outside_off) / wall, 4)
        if wall
        else None,
        "full_gc_off": off["full_gc_pauses_ms"],
        "full_gc_frozen": frozen["full_gc_pauses_ms"],
        "passed_off": off["passed"],
        "passed_frozen": frozen["passed"],
        "runs": {"off": off, "frozen": frozen},
    }


def report_frozen(
    args: argparse.Namespace,
    memory_entries: int,
    patterned: int,
    backend: str,
    comparisons: list[dict[str, Any]],
    one_time: dict[str, float],
) -> dict[str, Any]:
    """Prints the frozen mode's tables and verdicts; returns the figures for the JSON."""
    print(
        f"learning loop cost, frozen mode (memory {memory_entries} entries, "
        f"k={args.k}, search {backend}; simulated LLM {args.latency_ms:.0f} ms per call)"
    )
    print(
        "Time inside the hooks per episode (measured directly; first wave: the first "
        "`conc` episodes, which load the arrays backend's search cache):"
    )
    print(time_table(comparisons, "hook"))
    print()
    print("Where it goes (ms per episode, mean):")
    parts = ("embed", "search", "patterns", "bookkeeping", "adoption", "other")
    rows = [("conc", *parts, "injected", "adopted")]
    for c in comparisons:
        rows.append(
            (
                str(c["concurrency"]),
                *(f"{c['parts_ms_mean'].get(p, 0.0):.2f}" for p in parts),
                f"{c['injected_mean']:.2f}",
                f"{c['adopted_mean']:.2f}",
            )
        )
    print(table(rows, right=range(len(rows[0]))))
    print()
    print_off_vs(comparisons, "frozen", one_time)
    print(f"Targets (< {HOOK_MS_TARGET:.0f} ms and < {SHARE_TARGET:.0%} per episode):")
    for c in comparisons:
        label = f"  concurrency {c['concurrency']}:"
        print(
            f"{label} inside the hooks {c['hook_ms_mean']:.1f} ms "
            f"{verdict(c['hook_ms_mean'] < HOOK_MS_TARGET)}, "
            f"{c['hook_share']:.2%} of episode wall time "
            f"{verdict(c['hook_share'] < SHARE_TARGET)}"
        )
        print(
            f"{' ' * len(label)} run difference outside the model "
            f"{c['outside_model_diff_ms']:+.0f} ms "
            f"{verdict(c['outside_model_diff_ms'] < HOOK_MS_TARGET)}, "
            f"{c['outside_model_diff_share']:+.2%} "
            f"{verdict(c['outside_model_diff_share'] < SHARE_TARGET)}; "
            f"in wall time {c['wall_diff_ms']:+.0f} ms ({c['wall_diff_share']:+.2%}; "
            f"model calls {c['model_calls_off']:.2f} -> {c['model_calls_frozen']:.2f})"
        )
    figures = {
        "latency_ms": args.latency_ms,
        "memory_entries": memory_entries,
        "patterned_entries": patterned,
        "k": args.k,
        "backend": backend,
        "one_time": {k: round(v, 2) for k, v in one_time.items()},
        "levels": comparisons,
    }
    return figures


def compare_on(
    off: dict[str, Any], on: dict[str, Any], hooks: ClockedLoopHooks, setup: LoopSetup
) -> dict[str, Any]:
    """One concurrency level's figures in mode on: the loop's time per episode measured
    directly (teacher excluded; the teacher's apart), and the differences between the
    runs (ms per episode; shares of the on run's mean episode wall time)."""
    rows = hooks.per_episode()
    wall = on["episode_wall_ms_mean"]
    totals = [r["total"] for r in rows]
    parts = {part: round(mean([r[part] for r in rows]), 2) for part in rows[0]} if rows else {}
    check = setup.retirement_checks[-1]
    every = setup.settings.retirement.check_every
    wall_diff = wall - off["episode_wall_ms_mean"]
    outside_off = off["episode_wall_ms_mean"] - off["agent_ms_mean"]
    outside_on = wall - on["agent_ms_mean"]
    events = [event for event in hooks.synthesis if event is not None]
    stored: dict[str, int] = {}
    for event in events:
        for outcome in event.stored.values():
            stored[outcome] = stored.get(outcome, 0) + 1
    lanes: dict[str, int] = {}
    for lane in hooks.lanes.values():
        lanes[lane] = lanes.get(lane, 0) + 1
    return {
        "concurrency": on["concurrency"],
        "episodes": on["episodes"],
        "loop_ms_mean": round(mean(totals), 2),
        "loop_ms_p50": round(statistics.median(totals), 2) if totals else 0.0,
        "loop_ms_p95": round(p95(totals), 2),
        "loop_ms_max": round(max(totals, default=0.0), 2),
        "loop_share": round(mean(totals) / wall, 5) if wall else None,
        "loop_ms_first_wave": round(mean(totals[: on["concurrency"]]), 2),
        "loop_ms_rest": round(mean(totals[on["concurrency"] :]), 2),
        "teacher_ms_mean": round(mean([r[TEACHER] for r in rows]), 3),
        "teacher_ms_max": round(max((r[TEACHER] for r in rows), default=0.0), 3),
        "teacher_calls_mean": {k: round(v, 2) for k, v in hooks.teacher_calls().items()},
        "parts_ms_mean": parts,
        "per_episode_ms": [{k: round(v, 2) for k, v in r.items()} for r in rows],
        "lanes": dict(sorted(lanes.items())),
        "injected_mean": round(mean(list(hooks.injected.values())), 2),
        "adopted_mean": round(mean(list(hooks.adopted.values())), 2),
        "embed_calls_mean": round(hooks.entered("embed"), 2),
        "search_calls_mean": round(hooks.entered("search"), 2),
        "synthesis_calls": len(hooks.synthesis),
        "synthesis_stored": stored,
        "synthesis_refused": sum(len(event.refused) for event in events),
        "entries_at_start": setup.entries_at_start[-1],
        "retirement_check_ms": round(check["ms"], 1),
        "retirement_check_entries": int(check["active_entries"]),
        "retirement_check_retired": int(check["retired"]),
        "retirement_check_every": every,
        "retirement_amortised_ms": round(check["ms"] / every, 2),
        "cpu_ms_off": off["cpu_ms_per_episode"],
        "cpu_ms_on": on["cpu_ms_per_episode"],
        "wall_ms_off": off["episode_wall_ms_mean"],
        "wall_ms_on": wall,
        "wall_diff_ms": round(wall_diff, 1),
        "wall_diff_share": round(wall_diff / wall, 4) if wall else None,
        "model_calls_off": off["model_calls_mean"],
        "model_calls_on": on["model_calls_mean"],
        "outside_model_ms_off": round(outside_off, 1),
        "outside_model_ms_on": round(outside_on, 1),
        "outside_model_diff_ms": round(outside_on - outside_off, 1),
        "outside_model_diff_share": round((outside_on - outside_off) / wall, 4) if wall else None,
        "full_gc_off": off["full_gc_pauses_ms"],
        "full_gc_on": on["full_gc_pauses_ms"],
        "passed_off": off["passed"],
        "passed_on": on["passed"],
        "runs": {"off": off, "on": on},
    }


ON_PARTS = (
    "embed",
    "search",
    "patterns",
    "triage",
    "bookkeeping",
    "adoption",
    "supervision",
    "synthesis",
    "retirement",
    "other",
)


def report_on(
    args: argparse.Namespace,
    memory_entries: int,
    patterned: int,
    backend: str,
    comparisons: list[dict[str, Any]],
    one_time: dict[str, float],
) -> dict[str, Any]:
    """Prints mode on's tables and verdicts; returns the figures for the JSON."""
    print(
        f"learning loop cost, mode on (simulated teacher, triage by rule; memory "
        f"{memory_entries} entries before the first run, k={args.k}, search {backend}; "
        f"simulated LLM {args.latency_ms:.0f} ms per call)"
    )
    print("Lanes of the on runs (the memory and the track record carry over between levels):")
    for c in comparisons:
        mix = ", ".join(f"{lane} {n}" for lane, n in c["lanes"].items())
        print(f"  c={c['concurrency']:<3} {mix}  (memory {c['entries_at_start']} active entries)")
    print(
        "Time inside the loop per episode, the teacher's own time excluded (measured "
        "directly: hooks and supervision callbacks; teacher ms: the simulated teacher's "
        "five calls, mean per episode):"
    )
    print(time_table(comparisons, "loop", teacher=True))
    print()
    print("Where it goes (ms per episode, mean; synthesis includes embedding its cues):")
    rows = [("conc", *ON_PARTS, "synth embed")]
    for c in comparisons:
        rows.append(
            (
                str(c["concurrency"]),
                *(f"{c['parts_ms_mean'].get(p, 0.0):.2f}" for p in ON_PARTS),
                f"{c['parts_ms_mean'].get('synthesis_embed', 0.0):.2f}",
            )
        )
    print(table(rows, right=range(len(rows[0]))))
    print(
        "Per episode, mean: the student's entries injected and adopted; retrieval's "
        "embedder calls and searches; the teacher's calls:"
    )
    for c in comparisons:
        calls = "  ".join(f"{k} {v:.2f}" for k, v in c["teacher_calls_mean"].items())
        print(
            f"  c={c['concurrency']:<3} injected {c['injected_mean']:.2f}, adopted "
            f"{c['adopted_mean']:.2f}; embeds {c['embed_calls_mean']:.2f}, searches "
            f"{c['search_calls_mean']:.2f}; {calls}"
        )
    print("Synthesis (episodes distilled; entries stored by outcome; candidates refused):")
    for c in comparisons:
        stored = ", ".join(f"{k} {v}" for k, v in sorted(c["synthesis_stored"].items()))
        print(
            f"  c={c['concurrency']:<3} {c['synthesis_calls']} distilled; stored: "
            f"{stored or 'none'}; refused {c['synthesis_refused']}"
        )
    print(
        "Retirement check (in a run every `check_every` episodes of the hooks; timed once "
        "after each run, on the same memory):"
    )
    for c in comparisons:
        print(
            f"  c={c['concurrency']:<3} {c['retirement_check_ms']:.1f} ms over "
            f"{c['retirement_check_entries']} active entries ({c['retirement_check_retired']} "
            f"retired); every {c['retirement_check_every']} episodes: "
            f"{c['retirement_amortised_ms']:.2f} ms per episode"
        )
    print()
    print_off_vs(comparisons, "on", one_time)
    print(
        f"Targets (< {HOOK_MS_TARGET:.0f} ms and < {SHARE_TARGET:.0%} per episode; "
        "the teacher's own time excluded):"
    )
    for c in comparisons:
        label = f"  concurrency {c['concurrency']}:"
        print(
            f"{label} inside the loop {c['loop_ms_mean']:.1f} ms "
            f"{verdict(c['loop_ms_mean'] < HOOK_MS_TARGET)}, "
            f"{c['loop_share']:.2%} of episode wall time "
            f"{verdict(c['loop_share'] < SHARE_TARGET)} (teacher {c['teacher_ms_mean']:.2f} ms "
            "apart)"
        )
        amortised = c["loop_ms_mean"] + c["retirement_amortised_ms"]
        share = amortised / c["wall_ms_on"] if c["wall_ms_on"] else 0.0
        print(
            f"{' ' * len(label)} with the retirement check amortised {amortised:.1f} ms "
            f"{verdict(amortised < HOOK_MS_TARGET)}, {share:.2%} {verdict(share < SHARE_TARGET)}"
        )
        print(
            f"{' ' * len(label)} run difference outside the model "
            f"{c['outside_model_diff_ms']:+.0f} ms "
            f"{verdict(c['outside_model_diff_ms'] < HOOK_MS_TARGET)}, "
            f"{c['outside_model_diff_share']:+.2%} "
            f"{verdict(c['outside_model_diff_share'] < SHARE_TARGET)}; "
            f"in wall time {c['wall_diff_ms']:+.0f} ms ({c['wall_diff_share']:+.2%}; "
            f"model calls {c['model_calls_off']:.2f} -> {c['model_calls_on']:.2f})"
        )
    return {
        "mode": "on",
        "latency_ms": args.latency_ms,
        "memory_entries": memory_entries,
        "patterned_entries": patterned,
        "k": args.k,
        "backend": backend,
        "one_time": {k: round(v, 2) for k, v in one_time.items()},
        "levels": comparisons,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--mode",
        choices=("frozen", "on"),
        default="frozen",
        help="The learning mode measured against off (on: the whole loop, simulated teacher).",
    )
    parser.add_argument("--concurrency", default="1,4", help="Levels, comma-separated.")
    parser.add_argument("--cases", type=int, default=16, help="Episodes per run (eval split).")
    parser.add_argument(
        "--latency-ms", type=float, default=1500.0, help="Simulated model latency per call."
    )
    parser.add_argument("--entries", type=int, default=200, help="Generated memory entries.")
    parser.add_argument(
        "--warmup", type=int, default=4, help="Oracle episodes, off and frozen, played first."
    )
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    corpus = load_cases()
    index = {case.case_id: case for case in corpus}
    settings = LearningSettings(mode="frozen", k=args.k)
    loop_settings = LearningSettings(mode="on", teacher="simulated", k=args.k)
    one_time: dict[str, float] = {}

    started = time.perf_counter()
    embedder = make_embedder(settings.embeddings)
    one_time["model_load_ms"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    embedder.embed(["warm-up"])
    one_time["first_embed_ms"] = (time.perf_counter() - started) * 1000

    document = PlaybookExport.model_validate_json(EXAMPLE_MEMORY.read_text(encoding="utf-8"))
    newest = max(item.entry.created_at for item in document.entries)
    document.entries.extend(
        exported(generated_contents(args.entries), newest + timedelta(minutes=1))
    )
    seconds = embed_all(document, embedder)
    one_time["embed_cues_ms_per_text"] = seconds * 1000 / len(document.entries)
    patterned = sum(bool(item.entry.cue.patterns) for item in document.entries)
    students = sum(item.entry.audience == "student" for item in document.entries)
    log(
        f"memory: {len(document.entries)} entries ({students} the student's, "
        f"{patterned} with cue patterns); cues embedded in {seconds:.2f} s"
    )

    comparisons: list[dict[str, Any]] = []
    collections = FullCollections()
    setup = HookSetup(settings, [], [])
    with contextlib.ExitStack() as cleanup:
        database = setup_database(args.database_url, cleanup)
        log(f"database: {database.description}")
        database_url = database.url
        migrate_database(database_url)
        backend = asyncio.run(fill_memory(database_url, document, embedder))
        log(f"search backend: {backend}")
        logs = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
        urls = cleanup.enter_context(services(database_url, args.latency_ms, logs))
        loop_setup = LoopSetup(loop_settings, urls["simulated"], [], [], [], [])

        def play(
            agent: str,
            level: int,
            cases: list[Case],
            hooks: HookSetup | LoopSetup | None,
            make: Callable[[], Agent],
        ) -> dict[str, Any]:
            config = RunConfig(
                agent=agent,
                concurrency=level,
                limit=len(cases),
                learning=hooks.settings if hooks else LearningSettings(),
                simulated={"url": urls["simulated"]},
            )
            collections.take()
            result = asyncio.run(measure(database_url, urls, cases, make, config, index, hooks))
            result["full_gc_pauses_ms"] = collections.take()
            return result

        eval_cases = select_cases(
            RunConfig(agent="oracle", limit=max(args.cases, args.warmup)), corpus
        )
        if args.warmup:
            for warm in (None, setup):
                play("oracle", 1, eval_cases[: args.warmup], warm, OracleAgent)
            log("warmed up (oracle, off and frozen)")
        setup.open_ms.clear()
        setup.hooks.clear()

        measured = setup if args.mode == "frozen" else loop_setup
        for level in [int(c) for c in args.concurrency.split(",")]:
            cases = eval_cases[: args.cases]
            results = {}
            for hooks in (None, measured):
                config = RunConfig(agent="simulated", simulated={"url": urls["simulated"]})

                def simulated_agent(config: RunConfig = config) -> Agent:
                    return build_agent(config, simulated_url=urls["simulated"])

                name = hooks.settings.mode if hooks else "off"
                results[name] = play("simulated", level, cases, hooks, simulated_agent)
                log(
                    f"c={level} learning {name}: "
                    f"wall {results[name]['episode_wall_ms_mean']:.0f} ms/episode, "
                    f"{results[name]['model_calls_mean']} model calls"
                )
            if args.mode == "frozen":
                comparisons.append(compare(results["off"], results["frozen"], setup.hooks[-1]))
            else:
                comparisons.append(
                    compare_on(results["off"], results["on"], loop_setup.hooks[-1], loop_setup)
                )
    one_time["hooks_open_ms"] = mean(measured.open_ms)
    incomplete = [
        run
        for c in comparisons
        for run in c["runs"].values()
        if run["completed"] != run["episodes"] or run["harness_errors"]
    ]
    report = report_frozen if args.mode == "frozen" else report_on
    figures = report(args, len(document.entries), patterned, backend, comparisons, one_time)
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 1 if incomplete else 0


if __name__ == "__main__":
    raise SystemExit(main())
