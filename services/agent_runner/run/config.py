"""Run configuration: which agent, which cases, limits and services, loaded from YAML.

`config/run.yaml` holds the defaults; `crmbench run` flags override single fields. The
effective config is stored with the run, so every result can be traced to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from crmbench_contracts.cases import Split
from crmbench_contracts.paths import CONFIG_DIR, REPO_ROOT
from crmbench_contracts.traces import LearningMode
from crmbench_learning.embeddings import EmbeddingConfig
from crmbench_llm.config import ProviderConfig

DEFAULT_RUN_CONFIG = CONFIG_DIR / "run.yaml"

AgentName = Literal["student", "teacher", "random", "oracle", "simulated"]
AGENT_NAMES: tuple[str, ...] = ("student", "teacher", "random", "oracle", "simulated")


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(Strict):
    max_steps: int = Field(default=30, ge=1, le=500)
    """Tool calls allowed per episode."""
    max_tokens: int = Field(default=300_000, ge=1)
    """Input plus output tokens allowed per episode."""
    episode_ttl_seconds: int = Field(default=1800, ge=60)
    """Idle time before the CRM API reaps an episode a dead runner left open."""


class SimulatedSettings(Strict):
    config: Path = Path("config/simulated_llm.yaml")
    """The simulated LLM's error rates and guidance effects."""
    url: str | None = None
    """A running simulated LLM (its /v1 base URL); None starts one for the run."""


class QueueSettings(Strict):
    lease_seconds: float = Field(default=300.0, gt=0)
    """A claimed episode whose worker stops renewing for this long is claimed again."""
    heartbeat_seconds: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> QueueSettings:
        if self.heartbeat_seconds * 3 > self.lease_seconds:
            raise ValueError(
                "queue.heartbeat_seconds must be at most a third of queue.lease_seconds, "
                "or live claims expire between heartbeats and episodes are played twice"
            )
        return self


DEFAULT_RETRIEVAL_THRESHOLD = 0.35
"""Cosine similarity a playbook entry's cue needs to be retrieved, for the local
all-MiniLM-L6-v2 model (docs/learning.md, "Frozen runs": chosen on the labelled retrieval
set with bench/retrieval_threshold_bench.py). Another embedder needs its own."""


class TriageSettings(Strict):
    """The capability probe that picks an episode's supervision lane (design/learning.md,
    step 2). The rule reads the memory's track record of the episode's task category: the
    student's episodes of that category (escalated ones excluded) and how many passed.

    - fewer than `min_episodes`: `coach` (no evidence yet: supervise closely);
    - pass rate >= `auto_at`: `auto`; >= `paired_at`: `paired`;
    - at least `escalate_after` episodes and pass rate < `escalate_below`: `escalate`;
    - otherwise `coach`.

    The thresholds are the project's starting choice (not from a source): `auto_at` 0.9
    is the reliability verdict's own threshold; tune them with the report's lane mix."""

    probe: Literal["rule", "teacher"] = "rule"
    """`teacher` asks the teacher (its triage prompt); when it gives no usable answer,
    the rule decides and the event says so."""
    min_episodes: int = Field(default=3, ge=0)
    auto_at: float = Field(default=0.9, ge=0, le=1)
    paired_at: float = Field(default=0.6, ge=0, le=1)
    escalate_below: float = Field(default=0.3, ge=0, le=1)
    escalate_after: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> TriageSettings:
        if not self.escalate_below <= self.paired_at <= self.auto_at:
            raise ValueError("triage needs escalate_below <= paired_at <= auto_at")
        return self


class SynthesisSettings(Strict):
    """Step 4: the teacher distils candidate entries after an episode."""

    episodes: Literal["imperfect", "all"] = "imperfect"
    """Which episodes the teacher distils: `imperfect` those with a score below 1, a
    refused call or the teacher's guidance (the rest teach little); `all` every one."""
    near_duplicate_threshold: float = Field(default=0.95, ge=0, le=1)
    """Cosine similarity of a candidate's cue to an active entry's at which the candidate
    revises that entry instead of becoming a new one (docs/learning.md, Synthesis)."""


class RetirementSettings(Strict):
    """Step 5: entries that are harmful or never fire are retired, reason kept."""

    check_every: int = Field(default=25, ge=1)
    """Episodes (per runner process) between two retirement checks."""
    min_episodes: int = Field(default=8, ge=2)
    """Episodes with and without an entry before it can be judged harmful."""
    z: float = Field(default=1.96, gt=0)
    """Harmful: mean reward with minus without, plus z standard errors (Welch), is below
    zero; 1.96 is the two-sided 95% normal quantile."""
    never_fired_after: int = Field(default=300, ge=1)
    """Episodes the memory has run since an entry was created without retrieving it."""


class LearningSettings(Strict):
    """The learning loop of a run (design/learning.md). `off` (the default) runs without
    it; `frozen` retrieves playbook entries from the memory and injects the top `k` into
    the student's system prompt, with no synthesis, teacher guidance or retirement; `on`
    adds triage into lanes, the teacher's supervision, synthesis and retirement."""

    mode: LearningMode = "off"
    k: int = Field(default=3, ge=1, le=20)
    """Playbook entries below the universal level injected at most per episode."""
    k_universal: int = Field(default=1, ge=0, le=5)
    """Universal entries (which apply to any task) injected at most per episode, on top of
    `k`: a slot of their own, so they never crowd out the task's own lessons."""
    threshold: float = Field(default=DEFAULT_RETRIEVAL_THRESHOLD, ge=-1.0, le=1.0)
    """Cosine similarity of the task to an entry's cue for a semantic match (exact cue
    patterns match whatever it is)."""
    embeddings: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    """The embedder of tasks and cues; it must be the one the memory's entries were
    embedded with (entries without its vectors match by pattern only)."""
    control: Literal["retrieval", "shuffled"] = "retrieval"
    """`shuffled` is the shuffled-guidance control: as many entries as retrieval would
    inject, drawn at random (seeded by the session) from the memory's active entries."""
    explore_rate: float = Field(default=0.05, ge=0, le=0.5)
    """Share of episodes (drawn from the session id) whose top retrieved entry is withheld
    at random: its "without" episodes, the only ones comparable with the episodes it was
    injected in, and so the only evidence the harmful-entry test uses (0 turns harmful
    retirement off). 0.05 costs little reliability and judges an entry after about
    min_episodes / 0.05 = 160 retrievals (the project's choice). Mode `on` only: frozen
    runs never withhold (retirement, which it feeds, is off there)."""
    tool_subset: bool = False
    """Offer the student only the tools its injected entries and its task category need,
    plus the search tools (config/tool_subsets.yaml); the whole list once it asks for
    another. Off by default: a measured variant."""
    teacher: Literal["model", "simulated"] = "model"
    """`model`: the `providers.teacher` model; `simulated`: the seeded offline teacher."""
    simulated_teacher: Path = Path("config/simulated_teacher.yaml")
    triage: TriageSettings = Field(default_factory=TriageSettings)
    synthesis: SynthesisSettings = Field(default_factory=SynthesisSettings)
    retirement: RetirementSettings = Field(default_factory=RetirementSettings)

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_booleans(cls, mode: object) -> object:
        # YAML 1.1 reads an unquoted off / on as false / true.
        if isinstance(mode, bool):
            return "on" if mode else "off"
        return mode


class RunConfig(Strict):
    """Everything that decides what a run does."""

    agent: AgentName = "student"
    model: str | None = None
    """Overrides the model of the agent's provider."""
    split: Split = Split.EVAL
    cases: list[str] | None = None
    """Run exactly these case ids (in this order) instead of a split."""
    limit: int | None = Field(default=None, ge=1)
    """At most this many cases (the first ones of the split, in corpus order)."""
    trials: int = Field(default=1, ge=1, le=100)
    concurrency: int = Field(default=4, ge=1, le=256)
    seed: int = 0
    """Seeds the random agent (and nothing that changes what a model sees)."""
    limits: Limits = Field(default_factory=Limits)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    """Provider config of each LLM agent: `student`, `teacher` (the simulated agent uses
    an OpenAI-compatible provider pointed at the simulated LLM)."""
    prompt: Path = Path("config/prompts/agent_system.md")
    prices: Path = Path("config/prices.yaml")
    simulated: SimulatedSettings = Field(default_factory=SimulatedSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    corpus_dir: Path | None = None
    """The corpus folder; None for the committed one (corpus/cases)."""
    learning: LearningSettings = Field(default_factory=LearningSettings)

    @model_validator(mode="after")
    def _agent_has_provider(self) -> RunConfig:
        if self.agent in ("student", "teacher") and self.agent not in self.providers:
            raise ValueError(f"providers.{self.agent} is required to run the {self.agent} agent")
        learning = self.learning
        if (
            learning.mode == "on"
            and learning.teacher == "model"
            and "teacher" not in self.providers
        ):
            raise ValueError(
                "providers.teacher is required for learning mode 'on' with the model teacher"
                " (or set learning.teacher: simulated)"
            )
        return self

    def resolve_path(self, path: Path) -> Path:
        """Relative paths in a config are relative to the repository root."""
        return path if path.is_absolute() else REPO_ROOT / path

    def provider_for(self, agent: str) -> ProviderConfig:
        base = self.providers[agent]
        return base.model_copy(update={"model": self.model}) if self.model else base


def first_problem(exc: ValidationError) -> str:
    """The first bad field of a validation error, as `field.path: message`."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where or 'config'}: {first.get('msg')}"


def load_run_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The config in `path` (default config/run.yaml) with `overrides` applied on top; an
    override that is a mapping updates the file's section of that name key by key (so
    `{"learning": {"mode": "frozen"}}` keeps the file's other learning settings).

    Raises ConfigError naming the file and the first bad field.
    """
    source = path or DEFAULT_RUN_CONFIG
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the run config {source}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping of settings")
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        elif value is not None:
            data[key] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {first_problem(exc)}") from exc
