"""Configuration of the agent runner service, read from CRMBENCH_* environment variables
and DATABASE_URL. What a run does (agent, cases, limits) is the run config's business
(config/run.yaml plus the fields of POST /runs), not this file's."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent_runner.run.config import DEFAULT_RUN_CONFIG


class AgentRunnerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRMBENCH_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CRMBENCH_DATABASE_URL")
    )
    """Postgres holding the run queue and telemetry; `crmbench serve agent-runner` fills it
    with the embedded server's URL when it is unset."""

    crm_api_url: str | None = None
    """Base URL of the CRM API the agents act on; the CLI starts one when it is unset."""

    admin_key: str | None = None
    """The CRM API's admin key (opens and closes episodes); also the key of this service's
    run routes and of the verifier unless CRMBENCH_RUNNER_KEY / CRMBENCH_VERIFIER_KEY are set."""

    runner_key: str | None = None
    """The bearer key POST /runs, GET /runs and GET /runs/{id} require
    (CRMBENCH_RUNNER_KEY); the admin key when unset. /health is open."""

    verifier_url: str | None = None
    """Base URL of the verifier that scores episodes; the CLI starts one when it is unset."""

    verifier_key: str | None = None
    """The key sent to the verifier (CRMBENCH_VERIFIER_KEY); the admin key when unset."""

    simulated_llm_url: str | None = None
    """A running simulated LLM (its /v1 base URL) for the simulated agent; when unset, the
    service starts one in-process the first time a simulated run needs it."""

    run_config: Path = DEFAULT_RUN_CONFIG
    """The run config POST /runs applies its fields over (CRMBENCH_RUN_CONFIG)."""

    runs_dir: Path = Path("runs")
    """Where the JSONL traces of runs created here go: `<runs_dir>/<run_id>/`."""

    poll_seconds: float = Field(default=2.0, gt=0)
    """How long the worker waits before looking again when no run has work left."""

    work: bool = True
    """Whether this replica plays queued episodes (False: it only serves the API)."""

    runner_db_pool_size: int = Field(default=16, ge=2, le=256)
    """Connections to Postgres kept by the service (queue claims, results, the API). Named
    for the service: the CRM API's pool is CRMBENCH_CRM_API_DB_POOL_SIZE."""

    recent_runs: int = Field(default=50, ge=1, le=1000)
    """How many runs GET /runs lists by default."""

    @field_validator(
        "database_url",
        "crm_api_url",
        "admin_key",
        "runner_key",
        "verifier_url",
        "verifier_key",
        "simulated_llm_url",
    )
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        # Compose passes `${VAR:-}` through as an empty string: that means "not set".
        return value or None

    @property
    def api_key(self) -> str | None:
        """The key callers of the run routes must send."""
        return self.runner_key or self.admin_key

    @property
    def api_key_variable(self) -> str:
        """The environment variable `api_key` comes from, for error messages."""
        return "CRMBENCH_RUNNER_KEY" if self.runner_key else "CRMBENCH_ADMIN_KEY"

    @property
    def verifier_api_key(self) -> str | None:
        """The key this service's worker sends to the verifier."""
        return self.verifier_key or self.admin_key
