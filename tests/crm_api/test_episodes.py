"""Episodes: isolation, token scoping, determinism, reset, snapshots, restarts, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from crm_api.app import create_app
from crm_api.migrate import migrate
from crm_api.settings import CrmApiSettings
from crmbench_contracts.service_keys import WeakServiceKey
from crmbench_corpus.store import case_line, load_index
from tests.conftest import (
    Episode,
    RunningServer,
    _admin_sql,
    admin,
    open_episode,
    start_server,
)
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


LEAK_CASE = "CRM-00001"


def _leaks(response: httpx.Response, secret: str) -> list[str]:
    """Where `secret` shows in a response: its body or any header (name or value)."""
    found = [f"body of {response.request.method} {response.request.url.path}"] * (
        secret.lower() in response.text.lower()
    )
    found += [
        f"header {name} of {response.request.method} {response.request.url.path}"
        for name, value in response.headers.items()
        if secret.lower() in f"{name}: {value}".lower()
    ]
    return found


async def test_an_episode_token_never_sees_its_case_id(
    http: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    case = load_index()[LEAK_CASE]
    await db.execute(
        "INSERT INTO crm_meta.golden_case VALUES ($1, 'h', $2::jsonb, now())"
        " ON CONFLICT (case_id) DO UPDATE SET body = EXCLUDED.body",
        case.case_id,
        case_line(case),
    )
    made = await http.post("/episodes", json={"case_id": case.case_id}, headers=admin())
    assert made.status_code == 201, made.text
    ep = Episode(made.json()["episode_id"], made.json()["token"], http)
    other = await open_episode(http, payload())
    token = ep.auth
    try:
        seen: list[httpx.Response] = []
        # the case's own reference calls, without X-Tool-Call-Id (the echoed id is made up)
        for action in case.expected.reference_actions:
            seen.append(await ep.call(action.tool, action.args))
        assert [r.status_code for r in seen] == [200] * len(seen)
        assert seen[0].headers["X-Tool-Call-Id"].startswith(f"{ep.episode_id}:")
        lookup = {"criteria": {"name": "Quarry Software"}}
        with_id = {**token, "X-Tool-Call-Id": "leak-1"}
        seen += [
            await http.post("/tools/client_search", json=lookup, headers=with_id),
            await http.post("/tools/client_search", json=lookup, headers=with_id),  # replayed
            await http.post("/tools/client_search", json={}, headers=with_id),  # 409 reused
            await http.post(
                "/tools/client_search", json=lookup, headers={**token, "X-Tool-Call-Id": "bad id"}
            ),
            await ep.call("create_new_client", {"name": "Leak Co", "email": "a@leak.example.com"}),
            await ep.call("create_new_client", {}),  # 422
            await ep.call("create_new_client", {"name": "X", "colour": "red"}),  # unknown field
            await ep.call("no_such_tool"),  # 404
            await http.get("/tools/client_search", headers=token),  # 405
            await http.post("/tools/client_search", content=b"\xff", headers=token),  # unreadable
            await http.get(f"/episodes/{ep.episode_id}/state", headers=token),
            await http.get(f"/episodes/{ep.episode_id}/changes", headers=token),
            await http.get(
                f"/episodes/{ep.episode_id}/state", params={"tables": "nope"}, headers=token
            ),
            await http.get(f"/episodes/{other.episode_id}", headers=token),  # 404
            await http.get("/episodes/ep_0000000000000000", headers=token),
            await http.get("/episodes", headers=token),  # 403
            await http.post(f"/episodes/{ep.episode_id}/reset", headers=token),  # 403
            await http.get(f"/episodes/{ep.episode_id}/snapshots", headers=token),  # 403
            await http.get("/tools", headers=token),
            await http.get("/health", headers=token),
            await http.get("/no/such/route", headers=token),
        ]
        owner = await http.get(f"/episodes/{ep.episode_id}", headers=token)
        seen.append(owner)
        assert {r.status_code for r in seen} >= {200, 403, 404, 405, 409, 422}
        assert [leak for r in seen for leak in _leaks(r, case.case_id)] == []
        owner_view = owner.json()
        assert (
            owner.status_code == 200
            and owner_view["episode_id"] == ep.episode_id
            and "case_id" not in owner_view
        )
        # the admin key still sees which case the episode plays
        as_admin = await http.get(f"/episodes/{ep.episode_id}", headers=admin())
        assert as_admin.json()["case_id"] == case.case_id
        listed = await http.get("/episodes", params={"limit": 500}, headers=admin())
        mine = [e for e in listed.json()["episodes"] if e["episode_id"] == ep.episode_id]
        assert [e["case_id"] for e in mine] == [case.case_id]
    finally:
        for e in (ep, other):
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


# ---------------------------------------------------------------------------- expiry and the cap
# On a database of their own, served with a reaper that never runs during the test: the
# session's server reaps its database every 0.5 s, which would drop an expired episode
# before the call these tests make on it.


@pytest.fixture(scope="module")
def private_database_url(database_url: str) -> Iterator[str]:
    name = f"crmbench_limits_{secrets.token_hex(4)}"
    server = make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    asyncio.run(_admin_sql(server, f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url, CrmApiSettings().world_seed)
        yield url
    finally:
        asyncio.run(_admin_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.asynccontextmanager
async def limits_server(url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A CRM API on `url` whose reaper does not run during a test."""
    server = start_server(url, pool_size=0, reaper_interval_seconds=3600, **overrides)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            yield client
    finally:
        server.stop()


async def _drop_all(client: httpx.AsyncClient) -> None:
    listed = (await client.get("/episodes", headers=admin())).json()["episodes"]
    for entry in listed:
        await client.delete(f"/episodes/{entry['episode_id']}", headers=admin())


async def _registry(db_url: str, episode_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(
        make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        row = await conn.fetchrow(
            "SELECT last_used_at, call_seq FROM crm_meta.episode WHERE episode_id = $1",
            episode_id,
        )
        assert row is not None
        return row
    finally:
        await conn.close()


async def _backdate(db_url: str, episode_id: str, seconds: int) -> None:
    conn = await asyncpg.connect(
        make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await conn.execute(
            "UPDATE crm_meta.episode SET last_used_at = now() - make_interval(secs => $2)"
            " WHERE episode_id = $1",
            episode_id,
            float(seconds),
        )
    finally:
        await conn.close()


def _expired(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == "EPISODE_EXPIRED" and "POST /episodes" in error["message"]


async def test_an_expired_token_is_refused_at_once_and_never_revives_the_episode(
    private_database_url: str,
) -> None:
    async with limits_server(private_database_url) as client:
        ep = await open_episode(client, {"ttl_seconds": 60})
        ep.http = client
        await ep.ok("list_clients")
        await _backdate(private_database_url, ep.episode_id, 61)
        before = await _registry(private_database_url, ep.episode_id)
        # A read, a write and the episode's own routes: all refused, none extends it.
        _expired(await ep.call("list_clients"))
        _expired(await ep.call("create_new_client", {"name": "Late", "email": "l@late.io"}))
        _expired(await client.get(f"/episodes/{ep.episode_id}", headers=ep.auth))
        _expired(await client.get(f"/episodes/{ep.episode_id}/state", headers=ep.auth))
        assert await _registry(private_database_url, ep.episode_id) == before
        # The admin key still sees it (until the reaper drops it), expiry in the past.
        seen = await client.get(f"/episodes/{ep.episode_id}", headers=admin())
        assert seen.status_code == 200 and seen.json()["call_seq"] == before["call_seq"]
        # An unknown token stays a plain UNAUTHORIZED.
        unknown = await client.post(
            "/tools/list_clients", json={}, headers={"Authorization": "Bearer nope"}
        )
        assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "UNAUTHORIZED"
        await _drop_all(client)


async def test_a_ten_second_ttl_expires_ten_seconds_after_the_last_call(
    private_database_url: str,
) -> None:
    """The issue's case in real time: {"ttl_seconds": 10}, idle past it, then a call."""
    async with limits_server(private_database_url) as client:
        ep = await open_episode(client, {"ttl_seconds": 10})
        ep.http = client
        await ep.ok("list_clients")
        info = (await client.get(f"/episodes/{ep.episode_id}", headers=admin())).json()
        expires_at = datetime.fromisoformat(info["expires_at"])
        await asyncio.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 0.5)
        _expired(await ep.call("list_clients"))
        after = (await client.get(f"/episodes/{ep.episode_id}", headers=admin())).json()
        assert after["expires_at"] == info["expires_at"], "a refused call moved expires_at"
        await _drop_all(client)


def _gone(response: httpx.Response) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "EPISODE_EXPIRED" and "POST /episodes" in error["message"]


async def test_an_expired_episode_cannot_be_reset_snapshotted_or_restored(
    private_database_url: str,
) -> None:
    """The admin key cannot bring an expired episode back (its token working again, the
    live-episode cap overshot); it can still read and delete it until the reaper runs."""
    async with limits_server(private_database_url, max_live_episodes=2) as client:
        await _drop_all(client)
        ep = await open_episode(client, {"ttl_seconds": 60})
        ep.http = client
        await ep.ok("create_new_client", {"name": "Early", "email": "e@early.io"})
        url = f"/episodes/{ep.episode_id}"
        saved = await client.post(f"{url}/snapshots", json={"name": "s1"}, headers=admin())
        assert saved.status_code == 201, saved.text
        await _backdate(private_database_url, ep.episode_id, 61)
        before = await _registry(private_database_url, ep.episode_id)
        _gone(await client.post(f"{url}/reset", headers=admin()))
        _gone(await client.post(f"{url}/snapshots/s1/restore", headers=admin()))
        _gone(await client.post(f"{url}/snapshots", json={"name": "s2"}, headers=admin()))
        # Nothing was revived: the clock did not move and the token stays refused.
        assert await _registry(private_database_url, ep.episode_id) == before
        _expired(await ep.call("list_clients"))
        # Reads and the snapshot list still work for the admin key.
        for path in (url, f"{url}/state", f"{url}/changes", f"{url}/snapshots"):
            seen = await client.get(path, headers=admin())
            assert seen.status_code == 200, (path, seen.text)
        # The cap counts only live episodes, and resets cannot add expired ones back.
        live = [await open_episode(client) for _ in range(2)]
        _too_many(await client.post("/episodes", json={}, headers=admin()), 2)
        _gone(await client.post(f"{url}/reset", headers=admin()))
        listed = (await client.get("/episodes", headers=admin())).json()["episodes"]
        now = datetime.now(UTC)
        unexpired = [e for e in listed if datetime.fromisoformat(e["expires_at"]) > now]
        assert sorted(e["episode_id"] for e in unexpired) == sorted(e.episode_id for e in live)
        # A live episode still resets, snapshots and restores as before.
        assert (
            await client.post(f"/episodes/{live[0].episode_id}/reset", headers=admin())
        ).status_code == 200
        # And the admin key can delete the expired one.
        assert (await client.delete(url, headers=admin())).status_code == 200
        await _drop_all(client)


def _too_many(response: httpx.Response, cap: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "TOO_MANY_EPISODES"
    assert f"CRMBENCH_MAX_LIVE_EPISODES={cap}" in error["message"]
    assert int(response.headers["retry-after"]) >= 1


async def test_live_episodes_are_capped_with_a_429_and_retry_after(
    private_database_url: str,
) -> None:
    async with limits_server(private_database_url, max_live_episodes=3) as client:
        await _drop_all(client)
        opened = [await open_episode(client) for _ in range(3)]
        _too_many(await client.post("/episodes", json={}, headers=admin()), 3)
        # Closing one lets a new one open.
        await client.delete(f"/episodes/{opened[0].episode_id}", headers=admin())
        opened[0] = await open_episode(client)
        _too_many(await client.post("/episodes", json={}, headers=admin()), 3)
        # An expired episode is not live: it makes room before the reaper drops it.
        await _backdate(private_database_url, opened[1].episode_id, 7200)
        await open_episode(client)
        _too_many(await client.post("/episodes", json={}, headers=admin()), 3)
        await _drop_all(client)


async def test_a_concurrent_burst_on_two_replicas_never_overshoots_the_cap(
    private_database_url: str,
) -> None:
    async with (
        limits_server(private_database_url, max_live_episodes=3) as first,
        limits_server(private_database_url, max_live_episodes=3) as second,
    ):
        await _drop_all(first)
        burst = [c.post("/episodes", json={}, headers=admin()) for c in (first, second) * 6]
        responses = await asyncio.gather(*burst)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] * 3 + [429] * 9, statuses
        for refused in (r for r in responses if r.status_code == 429):
            _too_many(refused, 3)
        listed = (await first.get("/episodes", headers=admin())).json()
        assert listed["total"] == 3
        await _drop_all(first)


# ---------------------------------------------------------------------------- the admin key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "CRMBENCH_ADMIN_KEY is empty"),
        ("change-me", "CRMBENCH_ADMIN_KEY is a well-known placeholder"),
        ("CHANGEME", "CRMBENCH_ADMIN_KEY is a well-known placeholder"),
        ("changemechangeme", "CRMBENCH_ADMIN_KEY is a well-known placeholder"),
        ("k" * 15, "CRMBENCH_ADMIN_KEY is too short (15 characters, at least 16)"),
    ],
)
def test_a_weak_admin_key_refuses_to_start(key: str, problem: str) -> None:
    with pytest.raises(WeakServiceKey) as refused:
        create_app(CrmApiSettings(database_url=None, admin_key=key))
    assert str(refused.value).startswith(problem) and "\n" not in str(refused.value)
    assert "secrets.token_urlsafe" in str(refused.value)  # says how to make a good one


def test_a_strong_or_generated_admin_key_starts() -> None:
    create_app(CrmApiSettings(database_url=None, admin_key="k" * 16))
    generated = CrmApiSettings(database_url=None)
    assert len(generated.admin_key) >= 16
    create_app(generated)
