"""Shared fixtures: a real Postgres database migrated by alembic, and a real crm_api server.

With CRMBENCH_TEST_ADMIN_URL (a Postgres URL allowed to CREATE DATABASE) the session gets
a fresh database on that server; without it, an embedded Postgres in a temporary folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from crm_api.app import create_app
from crm_api.migrate import migrate
from crm_api.settings import CrmApiSettings
from crmbench_clients.serving import serving_in_thread
from crmbench_contracts.cases import Case

ADMIN_KEY = "test-admin-key-0123456789"
"""The admin key of the test services: at least 16 characters, as the services require."""


async def _admin_sql(admin_url: str, statement: str) -> None:
    import asyncpg

    url = make_url(admin_url).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database with the world loaded, private to this test session."""
    admin_url = os.environ.get("CRMBENCH_TEST_ADMIN_URL")
    if admin_url:
        name = f"crmbench_test_{secrets.token_hex(4)}"
        asyncio.run(_admin_sql(admin_url, f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        try:
            migrate(url, CrmApiSettings().world_seed)
            yield url
        finally:
            asyncio.run(_admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        from crmbench.postgres import start_embedded

        url = start_embedded(tmp_path_factory.mktemp("embedded-pg"))
        migrate(url, CrmApiSettings().world_seed)
        yield url


@dataclass
class RunningServer:
    """A crm_api served by uvicorn on a real port, in a thread of the test process."""

    base_url: str
    settings: CrmApiSettings
    stack: contextlib.ExitStack

    def stop(self) -> None:
        self.stack.close()


def start_server(database_url: str, **overrides: Any) -> RunningServer:
    settings = CrmApiSettings(database_url=database_url, admin_key=ADMIN_KEY, **overrides)
    stack = contextlib.ExitStack()
    base_url = stack.enter_context(serving_in_thread(create_app(settings), "CRM API"))
    return RunningServer(base_url, settings, stack)


@pytest.fixture(scope="session")
def crm_api(database_url: str) -> Iterator[RunningServer]:
    running = start_server(database_url, pool_size=2, reaper_interval_seconds=0.5)
    yield running
    running.stop()


@pytest.fixture
async def http(crm_api: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=crm_api.base_url, timeout=60) as client:
        yield client


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_KEY}"}


@dataclass
class Episode:
    """A live episode and a client bound to its token."""

    episode_id: str
    token: str
    http: httpx.AsyncClient

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, tool: str, args: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(f"/tools/{tool}", json=args or {}, headers=self.auth)

    async def ok(self, tool: str, args: dict[str, Any] | None = None) -> Any:
        response = await self.call(tool, args)
        assert response.status_code == 200, response.text
        return response.json()

    async def state(self) -> bytes:
        response = await self.http.get(f"/episodes/{self.episode_id}/state", headers=admin())
        assert response.status_code == 200, response.text
        return response.content

    async def changes(self) -> dict[str, Any]:
        response = await self.http.get(f"/episodes/{self.episode_id}/changes", headers=admin())
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


async def open_episode(http: httpx.AsyncClient, payload: dict[str, Any] | None = None) -> Episode:
    response = await http.post("/episodes", json=payload or {}, headers=admin())
    assert response.status_code == 201, response.text
    body = response.json()
    return Episode(body["episode_id"], body["token"], http)


@pytest.fixture
async def episode(http: httpx.AsyncClient) -> AsyncIterator[Episode]:
    """A fresh episode of the bare world, acting as a sales rep; dropped afterwards."""
    opened = await open_episode(http)
    yield opened
    await http.delete(f"/episodes/{opened.episode_id}", headers=admin())


REPO_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def scratch_database(database_url: str) -> Iterator[str]:
    """An empty database on the server of `database_url`, dropped on exit; yields its URL."""
    name = f"crmbench_scratch_{secrets.token_hex(4)}"
    server = make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    asyncio.run(_admin_sql(server, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def fresh_database_url(database_url: str) -> Iterator[str]:
    """An empty database on the same server as the session's, dropped afterwards."""
    with scratch_database(database_url) as url:
        yield url


async def load_into_database(database_url: str, cases: Sequence[Case]) -> None:
    """Loads `cases` into the golden-case table of `database_url` (as `crmbench cases
    load` does), so the CRM API can open their episodes."""
    from crm_api.database import create_engine
    from crm_api.world_store import load_golden_cases
    from crmbench_corpus.store import case_line

    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        rows = [(case.case_id, json.loads(case_line(case))) for case in cases]
        await load_golden_cases(engine, rows, "test")
    finally:
        await engine.dispose()
