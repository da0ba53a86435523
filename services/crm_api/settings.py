"""Configuration of the CRM API, read from CRMBENCH_* environment variables and DATABASE_URL."""

from __future__ import annotations

import secrets
from functools import lru_cache

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CrmApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRMBENCH_", extra="ignore")

    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CRMBENCH_DATABASE_URL")
    )
    """Postgres URL; the CLI fills it with an embedded server's URL when it is unset."""

    admin_key: str = Field(default_factory=lambda: secrets.token_urlsafe(24))
    """Bearer key for admin routes (create, list, drop, snapshot episodes). The app refuses
    to start with an empty, short (< 16 characters) or well-known key
    (crmbench_contracts.service_keys); unset, a random one is generated."""

    episode_ttl_seconds: int = Field(default=3600, ge=10)
    """An episode unused for this long expires: its token is refused at once (401
    EPISODE_EXPIRED) and the reaper drops it."""

    max_live_episodes: int = Field(default=200, ge=1)
    """Live (unexpired) episodes allowed at once (CRMBENCH_MAX_LIVE_EPISODES); one more
    POST /episodes is refused with 429 TOO_MANY_EPISODES and a Retry-After header."""

    reaper_interval_seconds: float = Field(default=30.0, gt=0)
    """How often the reaper looks for expired episodes."""

    pool_size: int = Field(default=4, ge=0, le=64)
    """Pre-built episode schemas kept ready so that creating an episode is fast
    (CRMBENCH_POOL_SIZE; schemas, not database connections)."""

    # The connection settings are named for the service (CRMBENCH_CRM_API_DB_*): the agent
    # runner sizes its own pool (CRMBENCH_RUNNER_DB_POOL_SIZE) from the same environment.
    crm_api_db_pool_size: int = Field(default=32, ge=1)
    """Database connections kept open by the service."""

    crm_api_db_max_overflow: int = Field(default=8, ge=0)
    """Extra database connections allowed under load."""

    episode_max_connections: int = Field(default=1, ge=1, le=64)
    """Database connections the tool calls of one episode may hold at once (per service
    process). An episode's calls run one after another anyway (each locks the episode), so
    its further calls wait in line in the service without holding a connection, and a busy
    episode never keeps the others waiting for one."""

    world_seed: int = 20251112
    """Seed of the deterministic world data set every episode clones."""


@lru_cache(maxsize=1)
def get_settings() -> CrmApiSettings:
    return CrmApiSettings()
