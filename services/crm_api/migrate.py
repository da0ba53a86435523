"""Applies the alembic migrations (the only way the CRM schema is created) and the world."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from alembic import command
from alembic.config import Config

from crm_api.database import create_engine
from crm_api.world_store import ensure_world
from crmbench_contracts.paths import MIGRATIONS_DIR


def migrations_dir() -> Path:
    configured = os.environ.get("CRMBENCH_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    return MIGRATIONS_DIR


def alembic_config(database_url: str) -> Config:
    location = migrations_dir()
    if not (location / "env.py").exists():
        raise FileNotFoundError(
            f"alembic migrations not found in {location}; set CRMBENCH_MIGRATIONS_DIR"
        )
    config = Config()
    config.set_main_option("script_location", str(location))
    config.attributes["database_url"] = database_url
    config.attributes["configure_logger"] = False
    return config


def upgrade_schema(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


async def _ensure_world(database_url: str, seed: int) -> tuple[bool, str]:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        return await ensure_world(engine, seed)
    finally:
        await engine.dispose()


def migrate(database_url: str, seed: int) -> tuple[bool, str]:
    """Schema to head, then the world for `seed`; returns (world reloaded?, world version)."""
    upgrade_schema(database_url)
    return asyncio.run(_ensure_world(database_url, seed))
