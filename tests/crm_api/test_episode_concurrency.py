"""One busy episode does not starve the others (issue 12, item 9): each episode's calls hold
at most `episode_max_connections` pooled connections; the rest wait in line in the service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Episode, RunningServer, open_episode, start_server
from tests.crm_api.seed import payload

POOL = 4
BURST = 3 * POOL  # calls on the busy episode, more than the pool holds
NOTE = {"entity_type": "Client", "entity_id": "c-acme", "content": "busy"}


@pytest.fixture
def small_pool_server(database_url: str) -> Iterator[RunningServer]:
    running = start_server(
        database_url,
        pool_size=0,
        crm_api_db_pool_size=POOL,
        crm_api_db_max_overflow=0,
        episode_max_connections=1,
    )
    yield running
    running.stop()


async def _search(episode: Episode) -> float:
    """The latency of one read on `episode`."""
    start = time.monotonic()
    response = await episode.call("client_search", {"criteria": {"name": "Acme"}})
    assert response.status_code == 200, response.text
    return time.monotonic() - start


async def _lock_waiters(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'"
        )
    )


async def test_calls_queued_on_a_busy_episode_do_not_hold_up_another(
    small_pool_server: RunningServer, database_url: str
) -> None:
    db = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(False)
    )
    async with httpx.AsyncClient(base_url=small_pool_server.base_url, timeout=120) as http:
        busy = await open_episode(http, payload())
        quiet = await open_episode(http, payload())
        baseline = min([await _search(quiet) for _ in range(3)])
        # Hold the busy episode's registry row, as a long call of that episode would: every
        # call on it now waits for the row. Without a bound each waiting call holds a pooled
        # connection, the burst takes the whole pool, and the quiet episode cannot get one.
        lock = db.transaction()
        await lock.start()
        await db.execute(
            "SELECT 1 FROM crm_meta.episode WHERE episode_id = $1 FOR UPDATE", busy.episode_id
        )
        burst = [asyncio.create_task(busy.call("add_note", NOTE)) for _ in range(BURST)]
        try:
            for _ in range(1000):
                if await _lock_waiters(db):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(max(0.3, 20 * baseline))  # let the whole burst arrive
            # The quiet call completes while the busy episode's queue has not moved at all.
            loaded = await asyncio.wait_for(_search(quiet), timeout=max(10.0, 200 * baseline))
            assert not any(task.done() for task in burst)
            assert await _lock_waiters(db) == 1  # one busy call holds a connection, not four
        finally:
            await lock.rollback()
        answers = await asyncio.gather(*burst)
        assert [r.status_code for r in answers] == [200] * BURST
        assert (await busy.changes())["total_changes"] == BURST
        assert loaded < 200 * baseline
    await db.close()
