"""Configuration of the verifier service, read from CRMBENCH_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from crmbench_contracts.paths import CONFIG_DIR
from crmbench_contracts.rewards import PASS_THRESHOLD
from crmbench_corpus.store import default_corpus_dir

REPOSITORY_CONFIG_DIR = CONFIG_DIR
"""The configuration committed with the repository (config/)."""


class VerifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRMBENCH_", extra="ignore")

    crm_api_url: str = "http://127.0.0.1:8000"
    """Base URL of the CRM API whose episodes are scored."""

    admin_key: str | None = None
    """The CRM API's admin key (CRMBENCH_ADMIN_KEY), needed to read episode state; also
    the key of this service's scoring routes unless CRMBENCH_VERIFIER_KEY is set."""

    verifier_key: str | None = None
    """The bearer key POST /verify and POST /verify/state require (CRMBENCH_VERIFIER_KEY);
    the admin key when unset. The app refuses to start with neither, or with a weak one."""

    corpus_dir: Path | None = None
    """Folder holding cases.jsonl; the corpus committed with the repository when unset."""

    # The judges file's `thresholds` replace these three defaults; a variable set in the
    # environment (or a value passed here) still wins over the file.
    judge_weight: float = Field(default=0.2, ge=0, le=1)
    """Share of the score given to the LLM judges when they run."""

    judge_max_spread: float = Field(default=0.3, ge=0, le=1)
    """Judges whose scores spread more than this are settled by the arbiter."""

    judge_max_uncertainty: float = Field(default=0.5, ge=0, le=1)
    """A judge less sure than this (uncertainty above it) calls in the arbiter."""

    judges_config: Path | None = None
    """The LLM judges file (CRMBENCH_JUDGES_CONFIG; see config/judges.yaml); no judges
    when unset. Judges are built, and their API keys read, when the app is created."""

    prices_config: Path | None = None
    """The price table the judges' calls are costed with (CRMBENCH_PRICES_CONFIG); the
    repository's config/prices.yaml when unset."""

    pass_threshold: float = Field(default=PASS_THRESHOLD, gt=0, le=1)
    """An episode passes when its score reaches this."""

    http_timeout_seconds: float = Field(default=30.0, gt=0)
    """Timeout of each request to the CRM API."""

    @field_validator("admin_key", "verifier_key")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        # Compose passes `${VAR:-}` through as an empty string: that means "not set".
        return value or None

    @property
    def api_key(self) -> str | None:
        """The key callers of the scoring routes must send."""
        return self.verifier_key or self.admin_key

    @property
    def api_key_variable(self) -> str:
        """The environment variable `api_key` comes from, for error messages."""
        return "CRMBENCH_VERIFIER_KEY" if self.verifier_key else "CRMBENCH_ADMIN_KEY"

    @property
    def cases_dir(self) -> Path:
        return self.corpus_dir or default_corpus_dir()

    @property
    def prices_path(self) -> Path:
        return self.prices_config or REPOSITORY_CONFIG_DIR / "prices.yaml"
