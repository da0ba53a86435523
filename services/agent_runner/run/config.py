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


class LearningSettings(Strict):
    """The learning loop of a run (design/learning.md). `off` (the default) runs without
    it; `frozen` retrieves playbook entries from the memory and injects the top `k` into
    the student's system prompt, with no synthesis, teacher guidance or retirement."""

    mode: LearningMode = "off"
    k: int = Field(default=3, ge=1, le=20)
    """Playbook entries injected at most per episode."""
    threshold: float = Field(default=DEFAULT_RETRIEVAL_THRESHOLD, ge=-1.0, le=1.0)
    """Cosine similarity of the task to an entry's cue for a semantic match (exact cue
    patterns match whatever it is)."""
    embeddings: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    """The embedder of tasks and cues; it must be the one the memory's entries were
    embedded with (entries without its vectors match by pattern only)."""

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_booleans(cls, mode: object) -> object:
        # YAML 1.1 reads an unquoted off / on as false / true.
        if isinstance(mode, bool):
            return "on" if mode else "off"
        return mode

    @field_validator("mode")
    @classmethod
    def _built(cls, mode: LearningMode) -> LearningMode:
        if mode == "on":
            raise ValueError(
                "learning mode 'on' (synthesis, teacher guidance, retirement) is not built "
                "yet; use 'frozen' (retrieval and injection only) or 'off'"
            )
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
