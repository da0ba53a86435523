"""Playbook memory: the lessons the learning loop distils and retrieves (design/learning.md),
their per-entry counters, retirements, trajectory events and the JSON export format.

An entry's *content* (audience, level, cue, action, expected effect) is what the teacher
wrote; its content hash is the SHA-256 of the content's canonical JSON, so the same lesson
has the same hash in every memory, export and process. Provenance, status and counters
are bookkeeping and are not hashed.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crmbench_contracts.canonical import canonical_json
from crmbench_contracts.traces import (
    Audience,
    LaneDecision,
    PlaybookRetrieval,
    SupervisionTransition,
)

Level = Literal["task", "domain", "workflow", "universal"]
"""How far an entry generalises: one kind of task, a CRM domain (quotes, contracts...),
a multi-step workflow, or any CRM work."""
EntryStatus = Literal["active", "retired"]
RetirementCode = Literal["harmful", "never_fired", "manual"]
"""Why an entry was retired: reward with it credibly below without, never retrieved in
the configured number of episodes, or by hand (`crmbench playbooks retire`)."""

CONTENT_FIELDS = frozenset({"audience", "level", "cue", "action", "expected_effect"})
"""The fields of an entry that its content hash covers."""


class _Content(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_pattern(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from exc
    return pattern


class Cue(_Content):
    """When an entry applies."""

    text: str = Field(min_length=1)
    """The situation in words; this is the text the loop embeds for retrieval."""
    patterns: list[str] = Field(default_factory=list)
    """Python regular expressions; an entry also matches a task that one of them finds
    (`re.search`, case-insensitive), whatever the similarity."""

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return [_check_pattern(pattern) for pattern in patterns]


class ArgumentRule(_Content):
    """A rule for one argument of one tool call the action prescribes."""

    tool: str = Field(min_length=1)
    argument: str = Field(min_length=1)
    rule: str = Field(min_length=1)
    """The rule in words, as injected ("amount as a plain number, no currency sign")."""
    pattern: str | None = None
    """A regular expression the argument's value must fully match (`re.fullmatch` on
    strings as they are, on other values' canonical JSON); None when the rule is not
    mechanically checkable. The loop uses it to tell whether a trace followed the rule."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        return None if pattern is None else _check_pattern(pattern)


class Action(_Content):
    """What to do when the cue matches."""

    text: str = Field(min_length=1)
    """Imperative instruction, as injected into the prompt."""
    tools: list[str] = Field(default_factory=list)
    """Names of the CRM tools the action uses (the loop may offer only these)."""
    argument_rules: list[ArgumentRule] = Field(default_factory=list)


class PlaybookContent(_Content):
    """The hashed part of an entry: what the teacher wrote."""

    audience: Audience
    level: Level
    cue: Cue
    action: Action
    expected_effect: str = Field(min_length=1)
    """What following the action should change (fewer refusals, a passing check...)."""

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the content fields."""
        content = self.model_dump(mode="json", include=set(CONTENT_FIELDS))
        return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()

    def content(self) -> PlaybookContent:
        """The content fields alone (drops bookkeeping of subclasses)."""
        return PlaybookContent.model_validate(
            self.model_dump(mode="json", include=set(CONTENT_FIELDS))
        )


def entry_id_for(content_hash: str) -> str:
    """The id of an entry created from content with this hash: the same in every process,
    so two processes that create the same entry collide on its primary key."""
    return f"pb-{content_hash[:16]}"


def _union(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


class Provenance(BaseModel):
    """Where an entry's lessons came from."""

    model_config = ConfigDict(extra="forbid")

    episode_ids: list[str] = Field(default_factory=list)
    """Session ids (`{run_id}/{case_id}/{trial}`) of the episodes it was distilled from."""
    run_ids: list[str] = Field(default_factory=list)
    teacher_call_ids: list[str] = Field(default_factory=list)
    """Ids of the teacher calls (synthesis, guidance) that wrote it."""

    def merged(self, other: Provenance) -> Provenance:
        """Both provenances, in order of first appearance, without repeats."""
        return Provenance(
            episode_ids=_union(self.episode_ids, other.episode_ids),
            run_ids=_union(self.run_ids, other.run_ids),
            teacher_call_ids=_union(self.teacher_call_ids, other.teacher_call_ids),
        )


class PlaybookCandidate(PlaybookContent):
    """An entry the synthesis step proposes (after its gates), before it is stored."""

    provenance: Provenance = Field(default_factory=Provenance)


def _check_hash(model: PlaybookContent, claimed: str) -> None:
    actual = model.digest()
    if claimed != actual:
        raise ValueError(f"content_hash {claimed!r} does not match the content ({actual!r})")


class PlaybookVersion(PlaybookContent):
    """One version of an entry, as it was written (versions are never changed)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    version: int = Field(ge=1)
    content_hash: str
    provenance: Provenance = Field(default_factory=Provenance)
    """The provenance of the candidate that produced this version."""
    created_at: datetime

    @model_validator(mode="after")
    def _hash_matches(self) -> PlaybookVersion:
        _check_hash(self, self.content_hash)
        return self


class PlaybookEntry(PlaybookContent):
    """A stored entry: its current version's content plus its bookkeeping."""

    entry_id: str = Field(min_length=1)
    version: int = Field(ge=1)
    """The current version (1 for a new entry; +1 per revision by a near-duplicate)."""
    content_hash: str
    provenance: Provenance = Field(default_factory=Provenance)
    """Everything every version and merged duplicate came from."""
    created_at: datetime
    updated_at: datetime
    status: EntryStatus = "active"
    retired_reason: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PlaybookEntry:
        _check_hash(self, self.content_hash)
        if (self.status == "retired") != (self.retired_reason is not None):
            raise ValueError("a retired entry has a retired_reason, an active one has none")
        return self


CounterField = Literal[
    "retrieved",
    "injected",
    "followed",
    "episodes_with",
    "reward_sum_with",
    "reward_sq_sum_with",
    "tokens_sum_with",
    "episodes_without",
    "reward_sum_without",
    "reward_sq_sum_without",
    "tokens_sum_without",
]
COUNTER_FIELDS: tuple[CounterField, ...] = get_args(CounterField)
FLOAT_COUNTERS = frozenset(
    {"reward_sum_with", "reward_sq_sum_with", "reward_sum_without", "reward_sq_sum_without"}
)
"""Counters that add rewards (floats); the others count (integers)."""


class PlaybookCounters(BaseModel):
    """An entry's track record (all versions together). "With" episodes had the entry
    injected; "without" episodes are the comparison the loop chooses (the same cases
    without it). Sums of squares give the variance for a confidence interval."""

    model_config = ConfigDict(extra="forbid")

    entry_id: str
    retrieved: int = 0
    injected: int = 0
    followed: int = 0
    episodes_with: int = 0
    reward_sum_with: float = 0.0
    reward_sq_sum_with: float = 0.0
    tokens_sum_with: int = 0
    episodes_without: int = 0
    reward_sum_without: float = 0.0
    reward_sq_sum_without: float = 0.0
    tokens_sum_without: int = 0

    @property
    def mean_reward_with(self) -> float | None:
        return self.reward_sum_with / self.episodes_with if self.episodes_with else None

    @property
    def mean_reward_without(self) -> float | None:
        return self.reward_sum_without / self.episodes_without if self.episodes_without else None


class PlaybookRetirement(BaseModel):
    """Why and when an entry was retired, with its counters at that moment."""

    model_config = ConfigDict(extra="forbid")

    entry_id: str
    version: int = Field(ge=1)
    code: RetirementCode
    reason: str = Field(min_length=1)
    counters: PlaybookCounters
    run_id: str | None = None
    retired_at: datetime


# ------------------------------------------------------------------ trajectory events


class LaneDecisionEvent(BaseModel):
    """Triage picked a supervision lane for the episode."""

    kind: Literal["lane_decision"] = "lane_decision"
    decision: LaneDecision
    teacher_call_id: str | None = None
    """The probe's teacher call, when the teacher decided."""


class GuidanceEvent(BaseModel):
    """The teacher told the student something during or after the episode."""

    kind: Literal["guidance"] = "guidance"
    step: int = Field(ge=0)
    """The step after which it was given; 0 is before the first tool call."""
    text: str
    teacher_call_id: str | None = None


class RetrievalEvent(BaseModel):
    """Entries retrieved for the episode, and the digest of the injected text."""

    kind: Literal["retrieval"] = "retrieval"
    retrieved: list[PlaybookRetrieval]
    injected_digest: str | None = None
    """SHA-256 of the injected guidance text; None when nothing was injected."""


class AdoptionEvent(BaseModel):
    """The trace shows an injected entry's prescribed action or argument rule."""

    kind: Literal["adoption"] = "adoption"
    entry_id: str
    step: int = Field(ge=1)
    evidence: str
    """What matched: the tool, or the argument rule and the value."""


class EscalationEvent(BaseModel):
    """The teacher took over the episode."""

    kind: Literal["escalation"] = "escalation"
    transition: SupervisionTransition

    @field_validator("transition")
    @classmethod
    def _to_escalate(cls, transition: SupervisionTransition) -> SupervisionTransition:
        if transition.to_lane != "escalate":
            raise ValueError("an escalation is a transition to the escalate lane")
        return transition


class DriftNoteEvent(BaseModel):
    """Something changed under the memory (an entry's advice no longer holds, a tool's
    behaviour moved): noted for the auditors, with the entries concerned."""

    kind: Literal["drift_note"] = "drift_note"
    note: str = Field(min_length=1)
    entry_ids: list[str] = Field(default_factory=list)


class GateRefusal(BaseModel):
    """A candidate the synthesis gates refused, and why."""

    gate: Literal["no_action", "no_cue", "restates_case", "invalid"]
    reason: str
    candidate: dict[str, Any]
    """The candidate as the teacher wrote it (kept for the audit)."""


class SynthesisEvent(BaseModel):
    """What the synthesis of one episode produced: the entries stored (created, revised
    or merged into as a duplicate) and the candidates its gates refused."""

    kind: Literal["synthesis"] = "synthesis"
    teacher_call_id: str | None = None
    stored: dict[str, Literal["created", "revised", "duplicate"]] = Field(default_factory=dict)
    """Entry id -> what storing the candidate did to it."""
    refused: list[GateRefusal] = Field(default_factory=list)


class TeacherCallEvent(BaseModel):
    """A teacher call whose answer the loop could not use (it failed or did not parse):
    the episode went on as if the teacher had said nothing."""

    kind: Literal["teacher_call"] = "teacher_call"
    call: str
    teacher_call_id: str
    error: str
    raw_text: str = ""


class RetirementEvent(BaseModel):
    """An entry was retired (written by the store with the retirement itself)."""

    kind: Literal["retirement"] = "retirement"
    entry_id: str
    code: RetirementCode
    reason: str


TrajectoryPayload = Annotated[
    LaneDecisionEvent
    | GuidanceEvent
    | RetrievalEvent
    | AdoptionEvent
    | EscalationEvent
    | DriftNoteEvent
    | RetirementEvent
    | SynthesisEvent
    | TeacherCallEvent,
    Field(discriminator="kind"),
]
TrajectoryKind = Literal[
    "lane_decision",
    "guidance",
    "retrieval",
    "adoption",
    "escalation",
    "drift_note",
    "retirement",
    "synthesis",
    "teacher_call",
]
TRAJECTORY_KINDS: tuple[TrajectoryKind, ...] = get_args(TrajectoryKind)


class TrajectoryEvent(BaseModel):
    """One event of the learning loop: what it decided, retrieved, advised or retired."""

    model_config = ConfigDict(extra="forbid")

    run_id: str | None = None
    """None for events outside a run (a retirement by hand)."""
    session_id: str | None = None
    episode_id: str | None = None
    payload: TrajectoryPayload
    recorded_at: datetime | None = None
    """Set by the store when the event is written."""

    @property
    def kind(self) -> TrajectoryKind:
        return self.payload.kind

    @property
    def entry_ids(self) -> list[str]:
        """The playbook entries the event concerns (for looking events up by entry)."""
        payload: Any = self.payload
        if isinstance(payload, RetrievalEvent):
            return [retrieval.entry_id for retrieval in payload.retrieved]
        if isinstance(payload, AdoptionEvent | RetirementEvent):
            return [payload.entry_id]
        if isinstance(payload, DriftNoteEvent):
            return list(payload.entry_ids)
        if isinstance(payload, SynthesisEvent):
            return list(payload.stored)
        return []


# ------------------------------------------------------------------ export


class ExportedEntry(BaseModel):
    """One entry with its history, embeddings, counters and retirement."""

    model_config = ConfigDict(extra="forbid")

    entry: PlaybookEntry
    versions: list[PlaybookVersion]
    """Every version, oldest first; the last is the entry's current one."""
    embeddings: dict[str, dict[int, list[float]]] = Field(default_factory=dict)
    """Embedder name -> version -> vector."""
    counters: PlaybookCounters
    retirement: PlaybookRetirement | None = None

    @classmethod
    def new(
        cls,
        content: PlaybookContent,
        created_at: datetime,
        embeddings: dict[str, dict[int, list[float]]] | None = None,
    ) -> ExportedEntry:
        """A new active entry of `content`: version 1, its id from the content hash, zero
        counters; `embeddings` as in the field (embedder -> version -> vector)."""
        digest = content.digest()
        fields = {**content.model_dump(), "content_hash": digest, "version": 1}
        entry_id = entry_id_for(digest)
        return cls(
            entry=PlaybookEntry.model_validate(
                {**fields, "entry_id": entry_id, "created_at": created_at, "updated_at": created_at}
            ),
            versions=[PlaybookVersion.model_validate({**fields, "created_at": created_at})],
            embeddings=embeddings or {},
            counters=PlaybookCounters(entry_id=entry_id),
        )

    @model_validator(mode="after")
    def _consistent(self) -> ExportedEntry:
        numbers = [version.version for version in self.versions]
        if numbers != list(range(1, len(numbers) + 1)) or numbers[-1:] != [self.entry.version]:
            raise ValueError(f"{self.entry.entry_id}: versions must run 1..{self.entry.version}")
        if self.versions[-1].content_hash != self.entry.content_hash:
            raise ValueError(f"{self.entry.entry_id}: the last version is not the current one")
        if self.counters.entry_id != self.entry.entry_id:
            raise ValueError(f"{self.entry.entry_id}: counters of another entry")
        for embedder, per_version in self.embeddings.items():
            unknown = sorted(set(per_version) - set(numbers))
            if unknown:
                raise ValueError(
                    f"{self.entry.entry_id}: {embedder!r} vectors of versions {unknown}, "
                    f"which the entry does not have"
                )
        if self.retirement is not None and self.retirement.entry_id != self.entry.entry_id:
            raise ValueError(f"{self.entry.entry_id}: the retirement of another entry")
        return self


class PlaybookExport(BaseModel):
    """A whole memory as JSON (`crmbench playbooks export`); importing it into any memory
    recreates the same entries with the same content hashes."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["crmbench.playbooks/1"] = "crmbench.playbooks/1"
    exported_at: datetime
    entries: list[ExportedEntry]

    @model_validator(mode="after")
    def _unique(self) -> PlaybookExport:
        """One item per entry, and one place per content hash (as in a memory)."""
        seen: set[str] = set()
        places: dict[str, str] = {}
        for item in self.entries:
            entry_id = item.entry.entry_id
            if entry_id in seen:
                raise ValueError(f"entry {entry_id} appears twice")
            seen.add(entry_id)
            for version in item.versions:
                place = f"{entry_id} v{version.version}"
                other = places.setdefault(version.content_hash, place)
                if other != place:
                    raise ValueError(
                        f"content hash {version.content_hash[:12]} is both {other} and {place}"
                    )
        return self
