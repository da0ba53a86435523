"""Configuration of the simulated LLM: its seed, its true per-category error rates, how well
it recovers from the API's refusals, and which guidance text lowers each error rate.

These numbers are the ground truth that the metrics are tested against, so they live in
YAML (config/simulated_llm.yaml) and are validated strictly: a typo in a category name or
a guided rate above the unguided one is an error, not a silent no-op.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crmbench_contracts.cases import FAILURE_CATEGORIES, Case
from crmbench_contracts.paths import CONFIG_DIR


class GuidedRate(BaseModel):
    """An error rate, and the lower rate that holds when guidance addresses the mistake."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(ge=0, le=1)
    """Probability of making the mistake with no guidance that addresses it."""
    guided_error_rate: float = Field(ge=0, le=1)
    """Probability of making it when the system prompt holds guidance that addresses it.
    Decisions use one draw for both, so guidance can only remove mistakes, never add one."""
    guidance_patterns: list[str] = Field(default_factory=list)
    """Case-insensitive regular expressions; guidance addresses the mistake when any of
    them matches the system prompt. An empty list means no guidance ever helps."""

    @field_validator("guidance_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as error:
                raise ValueError(f"guidance pattern {pattern!r} is not a regex: {error}") from None
        return patterns

    @model_validator(mode="after")
    def _guidance_only_helps(self) -> GuidedRate:
        if self.guided_error_rate > self.error_rate:
            raise ValueError(
                f"guided_error_rate {self.guided_error_rate} is above error_rate "
                f"{self.error_rate}; guidance may only lower the error rate"
            )
        return self

    @cached_property
    def _compiled(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p, re.IGNORECASE) for p in self.guidance_patterns)

    def addressed_by(self, system_prompt: str) -> bool:
        """Whether `system_prompt` holds guidance that addresses this mistake."""
        return any(pattern.search(system_prompt) for pattern in self._compiled)

    def rate(self, *, guided: bool) -> float:
        return self.guided_error_rate if guided else self.error_rate


class SuccessRule(GuidedRate):
    """The mistake on success-path cases: the last write is left out (or, for a read-only
    task, the answer misses the facts)."""


class MistakeRule(GuidedRate):
    """The mistake of one failure category: falling into the case's trap."""

    recovery_rate: float = Field(ge=0, le=1)
    """Probability that, once the API refuses one of its trap calls, it reads the error and
    redoes the task the right way; otherwise it claims success anyway."""


class SimulatedLLMConfig(BaseModel):
    """Everything the simulated LLM does differently from a perfect agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int
    """Every decision is a hash of (seed, case, trial, purpose): same seed, same episodes."""
    model: str = Field(default="simulated", min_length=1)
    """The model id `GET /v1/models` lists; completions echo the requested model instead."""
    latency_ms: float = Field(default=0.0, ge=0)
    """Wall time added to every call, so benchmarks see a model that takes time."""
    chars_per_token: float = Field(default=4.0, gt=0)
    """Token counts reported in `usage` are characters divided by this (rounded up)."""
    success: SuccessRule
    categories: dict[str, MistakeRule] = Field(default_factory=dict)
    """Per failure category (FAILURE_CATEGORIES); categories not listed use `default`."""
    default: MistakeRule
    unhelpful_reply: str = "I couldn't find what you asked for."
    """The reply when it botches a read-only task: it misses every fact asked for."""
    apology: str = "Sorry, I couldn't complete that: the CRM refused the request ({code})."
    """The reply when it gives up; `{code}` is the refusal's code (or what went wrong)."""

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, categories: dict[str, MistakeRule]) -> dict[str, MistakeRule]:
        unknown = sorted(set(categories) - set(FAILURE_CATEGORIES))
        if unknown:
            raise ValueError(
                f"unknown failure categories {unknown}; known: {sorted(FAILURE_CATEGORIES)}"
            )
        return categories

    @field_validator("apology")
    @classmethod
    def _apology_template(cls, apology: str) -> str:
        try:
            apology.format(code="X")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"apology may only use the {{code}} placeholder: {error}") from None
        return apology

    @classmethod
    def from_yaml(cls, path: str | Path) -> SimulatedLLMConfig:
        """Loads and validates a YAML file; raises pydantic's ValidationError on bad values."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
        return cls.model_validate(data)

    def rule_for(self, case: Case) -> SuccessRule | MistakeRule:
        """The rule that governs `case`: the success rule, or its failure category's."""
        if case.failure is None:
            return self.success
        return self.category_rule(case.failure.category)

    def category_rule(self, category: str) -> MistakeRule:
        """The rule of a failure category: its own, or `default` when it has none."""
        return self.categories.get(category, self.default)


def default_config_path() -> Path:
    """The committed default (config/simulated_llm.yaml at the repository root)."""
    return CONFIG_DIR / "simulated_llm.yaml"
