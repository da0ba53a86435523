"""Episodes: isolation, token scoping, determinism, reset, snapshots, restarts, expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Episode, RunningServer, admin, open_episode, start_server
from tests.crm_api.seed import payload


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    url = make_url(database_url).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False))
    yield conn
    await conn.close()


async def _schema_exists(db: asyncpg.Connection, name: str) -> bool:
    found = await db.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", name)
    return found is not None


async def test_parallel_episodes_of_one_seed_do_not_see_or_block_each_other(
    http: httpx.AsyncClient,
) -> None:
    episodes = await asyncio.gather(*(open_episode(http, payload()) for _ in range(20)))
    assert len({e.episode_id for e in episodes}) == 20
    new_client = {"name": "Parallel Co", "email": "same@parallel.example.com"}
    # Every episode inserts the same unique email at once; with one transaction per call
    # and a schema per episode none waits on another, so all finish well inside the bound.
    responses = await asyncio.wait_for(
        asyncio.gather(*(e.call("create_new_client", new_client) for e in episodes)), timeout=60
    )
    assert [r.status_code for r in responses] == [200] * 20
    created_ids = {r.json()["client_id"] for r in responses}
    assert len(created_ids) == 20
    for episode, response in zip(episodes, responses, strict=True):
        state = json.loads(await episode.state())
        mine = [c for c in state["tables"]["client"] if c["email"] == new_client["email"]]
        assert [c["client_id"] for c in mine] == [response.json()["client_id"]]
        log = await episode.changes()
        assert log["total_changes"] == 1
    await asyncio.gather(*(http.delete(f"/episodes/{e.episode_id}", headers=admin())
                           for e in episodes))  # fmt: skip


async def test_a_token_reaches_only_its_own_episode(http: httpx.AsyncClient) -> None:
    mine = await open_episode(http, payload())
    other = await open_episode(http, payload())
    try:
        own = await http.get(f"/episodes/{mine.episode_id}/state", headers=mine.auth)
        assert own.status_code == 200
        for path in ("", "/state", "/changes"):
            refused = await http.get(f"/episodes/{other.episode_id}{path}", headers=mine.auth)
            assert refused.status_code == 404, path
            assert refused.json()["error"]["code"] == "EPISODE_NOT_FOUND"
        admin_routes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("POST", "/episodes", {}),
            ("GET", "/episodes", None),
            ("DELETE", f"/episodes/{other.episode_id}", None),
            ("DELETE", f"/episodes/{mine.episode_id}", None),
            ("POST", f"/episodes/{other.episode_id}/reset", None),
            ("POST", f"/episodes/{mine.episode_id}/reset", None),
            ("POST", f"/episodes/{other.episode_id}/snapshots", {"name": "x"}),
            ("GET", f"/episodes/{other.episode_id}/snapshots", None),
            ("POST", f"/episodes/{other.episode_id}/snapshots/x/restore", None),
        ]
        for method, path, body in admin_routes:
            response = await http.request(method, path, json=body, headers=mine.auth)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "FORBIDDEN"
        # the admin key is not an episode token, and no token at all is refused too
        as_admin = await http.post("/tools/list_clients", json={}, headers=admin())
        assert as_admin.status_code == 401
        anonymous = await http.post("/tools/list_clients", json={})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "UNAUTHORIZED"
        # nothing above changed either episode
        assert (await mine.changes())["total_changes"] == 0
        assert (await other.changes())["total_changes"] == 0
    finally:
        for e in (mine, other):
            await http.delete(f"/episodes/{e.episode_id}", headers=admin())


async def test_same_seed_same_state_and_reset_restores_it_exactly(http: httpx.AsyncClient) -> None:
    first = await open_episode(http, payload())
    second = await open_episode(http, payload())
    bare = await open_episode(http, {})
    try:
        start = await first.state()
        assert start == await second.state()
        assert start != await bare.state()
        await first.ok("create_new_client", {"name": "Temp", "email": "t@temp.example.com"})
        await first.ok("modify_opportunity", {"opportunity_id": "o-open", "stage": "Proposal"})
        assert await first.state() != start
        reset = await http.post(f"/episodes/{first.episode_id}/reset", headers=admin())
        assert reset.status_code == 200 and reset.json()["call_seq"] == 0
        assert await first.state() == start
        assert (await first.changes())["total_changes"] == 0
        # the clock restarts too: the same call after a reset writes the same timestamp
        again = await first.ok("create_new_client", {"name": "T", "email": "t@temp.example.com"})
        fresh = await second.ok("create_new_client", {"name": "T", "email": "t@temp.example.com"})
        assert again["created_date"] == fresh["created_date"] == "2025-11-12T09:00:01+00:00"
    finally:
        for e in (first, second, bare):
            await http.delete(f"/episodes/{e.episode_id}", headers=admin())


async def test_snapshots_restore_state_and_change_log(http: httpx.AsyncClient) -> None:
    ep = await open_episode(http, payload())
    base = f"/episodes/{ep.episode_id}/snapshots"
    try:
        await ep.ok("modify_opportunity", {"opportunity_id": "o-open", "probability": 40})
        made = await http.post(base, json={"name": "after-first"}, headers=admin())
        assert made.status_code == 201 and made.json()["call_seq"] == 1
        saved_state, saved_log = await ep.state(), await ep.changes()
        await ep.ok("modify_opportunity", {"opportunity_id": "o-open", "probability": 90})
        await ep.ok("add_note", {"entity_type": "Client", "entity_id": "c-acme", "content": "x"})
        assert await ep.state() != saved_state
        restored = await http.post(f"{base}/after-first/restore", headers=admin())
        assert restored.status_code == 200 and restored.json()["call_seq"] == 1
        assert await ep.state() == saved_state
        assert await ep.changes() == saved_log
        # writes after a restore continue the change log where the snapshot left it
        await ep.ok("modify_opportunity", {"opportunity_id": "o-open", "probability": 41})
        seqs = [c["seq"] for call in (await ep.changes())["tool_calls"] for c in call["changes"]]
        assert seqs == [1, 2]
        listed = await http.get(base, headers=admin())
        assert [s["name"] for s in listed.json()["snapshots"]] == ["after-first"]
        duplicate = await http.post(base, json={"name": "after-first"}, headers=admin())
        assert duplicate.status_code == 409
        bad_name = await http.post(base, json={"name": "no spaces"}, headers=admin())
        assert bad_name.status_code == 422 and bad_name.json()["error"]["field"] == "name"
        missing = await http.post(f"{base}/nope/restore", headers=admin())
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "SNAPSHOT_NOT_FOUND"
        gone = await http.delete(f"{base}/after-first", headers=admin())
        assert gone.status_code == 204
        assert (await http.get(base, headers=admin())).json()["snapshots"] == []
    finally:
        await http.delete(f"/episodes/{ep.episode_id}", headers=admin())


async def test_deleting_drops_the_schema_and_snapshots(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ep = await open_episode(http, payload())
    await http.post(f"/episodes/{ep.episode_id}/snapshots", json={"name": "s"}, headers=admin())
    snapshot_schema = await db.fetchval(
        "SELECT schema_name FROM crm_meta.episode_snapshot WHERE episode_id = $1", ep.episode_id
    )
    assert await _schema_exists(db, ep.episode_id) and await _schema_exists(db, snapshot_schema)
    deleted = await http.delete(f"/episodes/{ep.episode_id}", headers=admin())
    assert deleted.status_code == 200
    assert not await _schema_exists(db, ep.episode_id)
    assert not await _schema_exists(db, snapshot_schema)
    again = await http.delete(f"/episodes/{ep.episode_id}", headers=admin())
    assert again.status_code == 404
    assert (await ep.call("list_clients")).status_code == 401


async def test_idle_episodes_expire(http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    idle = await open_episode(http, {"ttl_seconds": 60})
    busy = await open_episode(http, {"ttl_seconds": 60})
    # Make one episode look idle for two minutes; the reaper (every 0.5 s here) drops it.
    await db.execute(
        "UPDATE crm_meta.episode SET last_used_at = now() - interval '2 minutes'"
        " WHERE episode_id = $1",
        idle.episode_id,
    )
    for _ in range(100):
        if not await _schema_exists(db, idle.episode_id):
            break
        await asyncio.sleep(0.1)
    assert not await _schema_exists(db, idle.episode_id)
    assert (await idle.call("list_clients")).status_code == 401
    assert (await busy.call("list_clients")).status_code == 200
    await http.delete(f"/episodes/{busy.episode_id}", headers=admin())


async def test_a_restarted_service_keeps_live_episodes(
    crm_api: RunningServer, database_url: str
) -> None:
    first = start_server(database_url, pool_size=1)
    async with httpx.AsyncClient(base_url=first.base_url, timeout=60) as client:
        ep = await open_episode(client, payload())
        await ep.ok("modify_opportunity", {"opportunity_id": "o-open", "probability": 55})
        before = await ep.state()
    first.stop()
    second = start_server(database_url, pool_size=1)
    try:
        async with httpx.AsyncClient(base_url=second.base_url, timeout=60) as client:
            survivor = Episode(ep.episode_id, ep.token, client)
            assert await survivor.state() == before
            moved = await survivor.ok("modify_opportunity",
                                      {"opportunity_id": "o-open", "stage": "Proposal"})  # fmt: skip
            assert moved["probability"] == 55
            await client.delete(f"/episodes/{ep.episode_id}", headers=admin())
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"seed": {"contact": [{"contact_id": "p1", "first_name": "A", "last_name": "B",
                                "client_id": "no-such-client"}]}}, "INVALID_REQUEST", "seed"),
        ({"seed": {"widgets": []}}, "EXTRA_FIELD", "seed.widgets"),
        ({"seed": {"client": [{"client_id": "c1"}]}}, "MISSING_REQUIRED_FIELD",
         "seed.client.0.name"),
        ({"today": "12/11/2025"}, "INVALID_DATE_FORMAT", "today"),
        ({"actor": {"name": "A", "role": "ceo"}}, "INVALID_ENUM", "actor.role"),
        ({"ttl_seconds": 1}, "INVALID_REQUEST", "ttl_seconds"),
        ({"seed": {"client": [{"client_id": "dup", "name": "A"},
                              {"client_id": "dup", "name": "B"}]}}, "INVALID_REQUEST", "seed"),
    ],
)  # fmt: skip
async def test_bad_episode_payloads_are_refused_and_create_nothing(
    http: httpx.AsyncClient, db: asyncpg.Connection, body: dict[str, Any], code: str, field: str
) -> None:
    before = await db.fetchval("SELECT count(*) FROM crm_meta.episode")
    response = await http.post("/episodes", json=body, headers=admin())
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert await db.fetchval("SELECT count(*) FROM crm_meta.episode") == before


async def test_episode_listing_and_lookup(http: httpx.AsyncClient) -> None:
    ep = await open_episode(http, {"actor": {"name": "Morgan", "role": "manager"},
                                   "today": "2026-02-01"})  # fmt: skip
    try:
        listed = await http.get("/episodes", params={"limit": 500}, headers=admin())
        assert ep.episode_id in {e["episode_id"] for e in listed.json()["episodes"]}
        one = await http.get(f"/episodes/{ep.episode_id}", headers=ep.auth)
        assert one.json()["actor"] == {"name": "Morgan", "role": "manager"}
        assert one.json()["today"] == "2026-02-01"
        unknown = await http.get("/episodes/ep_0000000000000000", headers=admin())
        assert unknown.status_code == 404
        malformed = await http.get("/episodes/'; DROP SCHEMA world; --", headers=admin())
        assert malformed.status_code == 404
    finally:
        await http.delete(f"/episodes/{ep.episode_id}", headers=admin())


async def test_state_can_be_limited_to_some_tables(http: httpx.AsyncClient) -> None:
    ep = await open_episode(http, payload())
    try:
        some = await http.get(f"/episodes/{ep.episode_id}/state",
                              params={"tables": "quote,client"}, headers=admin())  # fmt: skip
        assert sorted(some.json()["tables"]) == ["client", "quote"]
        full = json.loads(await ep.state())
        assert some.json()["tables"]["quote"] == full["tables"]["quote"]
        bad = await http.get(f"/episodes/{ep.episode_id}/state",
                             params={"tables": "quote,widgets"}, headers=admin())  # fmt: skip
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "INVALID_ENUM"
        assert "opportunity" in bad.json()["error"]["allowed"]
    finally:
        await http.delete(f"/episodes/{ep.episode_id}", headers=admin())


async def test_an_episode_is_built_from_a_loaded_case(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    body = {"today": "2026-01-05", "actor": {"name": "Casey", "role": "manager"},
            "seed": payload()["seed"]}  # fmt: skip
    await db.execute(
        "INSERT INTO crm_meta.golden_case VALUES ('T-CASE-1', 'h', $1::jsonb, now())"
        " ON CONFLICT (case_id) DO NOTHING",
        json.dumps(body),
    )
    made = await http.post("/episodes", json={"case_id": "T-CASE-1"}, headers=admin())
    assert made.status_code == 201, made.text
    assert made.json()["case_id"] == "T-CASE-1"
    assert made.json()["today"] == "2026-01-05"
    assert made.json()["actor"] == {"name": "Casey", "role": "manager"}
    from_case = Episode(made.json()["episode_id"], made.json()["token"], http)
    from_seed = await open_episode(http, body)
    try:
        assert await from_case.state() == await from_seed.state()
        both = await http.post("/episodes", json={"case_id": "T-CASE-1", "today": "2026-01-01"},
                               headers=admin())  # fmt: skip
        assert both.status_code == 422 and both.json()["error"]["field"] == "case_id"
        missing = await http.post("/episodes", json={"case_id": "NOPE"}, headers=admin())
        assert missing.status_code == 404 and "cases load" in missing.json()["error"]["message"]
    finally:
        for e in (from_case, from_seed):
            await http.delete(f"/episodes/{e.episode_id}", headers=admin())


async def test_a_recycled_schema_starts_exactly_like_a_fresh_clone(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reference = await open_episode(http, payload())
    expected = await reference.state()
    used = await open_episode(http, payload())
    await used.ok("create_new_client", {"name": "Left Behind", "email": "lb@left.example.com"})
    await used.ok("modify_opportunity", {"opportunity_id": "o-open", "stage": "Proposal"})
    await used.ok("add_note", {"entity_type": "Client", "entity_id": "c-acme", "content": "x"})
    await http.delete(f"/episodes/{used.episode_id}", headers=admin())
    recycled = await db.fetchval(
        "SELECT schema_name FROM crm_meta.episode_pool WHERE NOT ready ORDER BY created_at DESC"
    )
    assert recycled is not None, "a deleted episode's schema should wait to be recycled"
    for _ in range(200):
        if await db.fetchval("SELECT ready FROM crm_meta.episode_pool WHERE schema_name = $1",
                             recycled):  # fmt: skip
            break
        await asyncio.sleep(0.05)
    opened = []
    try:
        while await db.fetchval(
            "SELECT 1 FROM crm_meta.episode_pool WHERE schema_name = $1", recycled
        ):
            opened.append(await open_episode(http, payload()))
            assert len(opened) < 20
        for episode in opened:
            assert await episode.state() == expected
            assert (await episode.changes())["total_changes"] == 0
    finally:
        for episode in [reference, *opened]:
            await http.delete(f"/episodes/{episode.episode_id}", headers=admin())
