"""Provider configuration and the price table; both are data loaded from YAML and environment.

API keys are never configuration values: a config names the environment variable that
holds the key, and the key is read from there when the provider is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, model_validator

from crmbench_llm.base import MissingApiKey, RetryPolicy
from crmbench_llm.types import Usage

ProviderName = Literal["openai", "anthropic", "scripted"]

DEFAULT_KEY_ENV: dict[str, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
}

NO_KEY_PLACEHOLDER = "unused"
"""Sent as the key to servers configured with `api_key_env: null` (local servers)."""


class ProviderConfig(BaseModel):
    """How to reach one model."""

    model_config = ConfigDict(extra="forbid")

    provider: ProviderName
    model: str
    base_url: str | None = None
    """Any compatible endpoint (vLLM, Ollama, llama.cpp's server); None for the vendor's."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key. Defaults to OPENAI_API_KEY or
    ANTHROPIC_API_KEY; set it to null explicitly for a local server that needs no key."""
    temperature: float | None = None
    """None leaves the provider's default (some models accept no other)."""
    max_tokens: int = 4096
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    """OpenAI only: the request field carrying `max_tokens`; older compatible servers
    know only `max_tokens`."""
    timeout_seconds: float = Field(default=120.0, gt=0)
    """Per attempt, from request to full response."""
    max_retries: int = Field(default=4, ge=0)
    backoff_base_seconds: float = Field(default=1.0, ge=0)
    """First retry waits about this long, doubling each time, with jitter."""
    backoff_max_seconds: float = Field(default=60.0, ge=0)
    """Cap on any single wait, a provider's Retry-After included."""

    @model_validator(mode="before")
    @classmethod
    def _default_key_env(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key_env" not in data:
            default = DEFAULT_KEY_ENV.get(str(data.get("provider")))
            if default is not None:
                data = {**data, "api_key_env": default}
        return data

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_retries,
            backoff_base_seconds=self.backoff_base_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
        )

    def api_key(self) -> str:
        """The key from the environment variable named in `api_key_env`.

        Raises MissingApiKey, naming the variable, when it is unset or empty.
        """
        if self.api_key_env is None:
            return NO_KEY_PLACEHOLDER
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            raise MissingApiKey(self.provider, self.api_key_env)
        return value


class ModelPrice(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    """None: cached input is billed as ordinary input."""


class PriceTable(RootModel[dict[str, ModelPrice]]):
    """Prices by model name, loaded from YAML `{model: {input_per_mtok, ...}}`."""

    @classmethod
    def from_yaml(cls, path: str | Path) -> PriceTable:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from exc
        return cls.model_validate(data)

    def price(self, *models: str) -> ModelPrice | None:
        """The price of the first of `models` the table knows."""
        for model in models:
            if model in self.root:
                return self.root[model]
        return None

    def cost(self, usage: Usage, *models: str) -> float | None:
        """Cost in US dollars of `usage`, or None when none of `models` has a price."""
        price = self.price(*models)
        if price is None:
            return None
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_rate = (
            price.cached_input_per_mtok
            if price.cached_input_per_mtok is not None
            else price.input_per_mtok
        )
        dollars = (
            (usage.input_tokens - cached) * price.input_per_mtok
            + cached * cached_rate
            + usage.output_tokens * price.output_per_mtok
        ) / 1_000_000
        return round(dollars, 10)
