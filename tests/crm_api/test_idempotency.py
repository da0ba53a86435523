"""X-Tool-Call-Id is an idempotency key (issue 12, item 10): a repeated id in the same
episode answers the first result without applying the call again, even when the client
never saw that first answer; the same id with other arguments is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from tests.conftest import Episode, admin, open_episode
from tests.crm_api.seed import payload

NOTE = {"entity_type": "Client", "entity_id": "c-acme", "content": "Called about renewal"}


async def _call(
    episode: Episode, tool: str, args: dict[str, object], call_id: str
) -> httpx.Response:
    return await episode.http.post(
        f"/tools/{tool}", json=args, headers={**episode.auth, "X-Tool-Call-Id": call_id}
    )


async def _episode(http: httpx.AsyncClient) -> Episode:
    return await open_episode(http, payload())


async def test_a_repeated_tool_call_id_answers_the_first_result_without_applying_it_again(
    http: httpx.AsyncClient,
) -> None:
    episode = await _episode(http)
    try:
        first = await _call(episode, "create_new_client", {"name": "Once Co"}, "call-1")
        assert first.status_code == 200, first.text
        assert "x-tool-call-replayed" not in first.headers
        clock = (await http.get(f"/episodes/{episode.episode_id}", headers=admin())).json()
        again = await _call(episode, "create_new_client", {"name": "Once Co"}, "call-1")
        assert again.status_code == 200
        assert again.content == first.content
        assert again.headers["x-tool-call-id"] == "call-1"
        assert again.headers["x-tool-call-replayed"] == "true"
        changes = await episode.changes()
        assert changes["total_changes"] == 1
        assert [c["tool_call_id"] for c in changes["tool_calls"]] == ["call-1"]
        state = json.loads(await episode.state())
        assert [c["name"] for c in state["tables"]["client"]].count("Once Co") == 1
        # a replay does not move the episode clock either
        after = (await http.get(f"/episodes/{episode.episode_id}", headers=admin())).json()
        assert after["call_seq"] == clock["call_seq"]
        # reads are keyed too: the same id answers the same page
        read = await _call(episode, "client_search", {"criteria": {"name": "Once"}}, "read-1")
        await episode.ok("add_note", NOTE)
        reread = await _call(episode, "client_search", {"criteria": {"name": "Once"}}, "read-1")
        assert (reread.status_code, reread.content) == (200, read.content)
    finally:
        await http.delete(f"/episodes/{episode.episode_id}", headers=admin())


async def test_a_tool_call_id_reused_with_other_arguments_is_409(http: httpx.AsyncClient) -> None:
    episode = await _episode(http)
    try:
        assert (await _call(episode, "add_note", NOTE, "note-1")).status_code == 200
        for tool, args in (
            ("add_note", {**NOTE, "content": "Something else"}),
            ("create_new_client", {"name": "Other Co"}),
        ):
            reused = await _call(episode, tool, args, "note-1")
            assert reused.status_code == 409, reused.text
            error = reused.json()["error"]
            assert (error["code"], error["field"]) == ("TOOL_CALL_ID_REUSED", "X-Tool-Call-Id")
        assert (await episode.changes())["total_changes"] == 1
        # ids are per episode: another episode may use the same one
        other = await _episode(http)
        try:
            assert (await _call(other, "add_note", NOTE, "note-1")).status_code == 200
        finally:
            await http.delete(f"/episodes/{other.episode_id}", headers=admin())
    finally:
        await http.delete(f"/episodes/{episode.episode_id}", headers=admin())


async def test_a_refused_call_is_not_stored_and_may_be_retried_with_its_id(
    http: httpx.AsyncClient,
) -> None:
    episode = await _episode(http)
    try:
        args = {"first_name": "Ann", "last_name": "Lee", "client_id": "c-new"}
        refused = await _call(episode, "create_new_contact", args, "contact-1")
        assert refused.status_code == 422
        await episode.ok("create_new_client", {"name": "New Co"})
        client_id = (await episode.ok("client_search", {"criteria": {"name": "New Co"}}))["items"][
            0
        ]["client_id"]
        retried = await _call(episode, "create_new_contact", {**args, "client_id": client_id},
                              "contact-1")  # fmt: skip
        assert retried.status_code == 200, retried.text
    finally:
        await http.delete(f"/episodes/{episode.episode_id}", headers=admin())


async def test_reset_and_restore_take_the_stored_results_with_the_state(
    http: httpx.AsyncClient,
) -> None:
    episode = await _episode(http)
    base = f"/episodes/{episode.episode_id}"
    try:
        snap = await http.post(f"{base}/snapshots", json={"name": "before"}, headers=admin())
        assert snap.status_code == 201
        first = await _call(episode, "add_note", NOTE, "n-1")
        assert first.status_code == 200
        # after a restore to before the call, the id is new again: the call applies once
        assert (await http.post(f"{base}/snapshots/before/restore", headers=admin())).is_success
        again = await _call(episode, "add_note", NOTE, "n-1")
        assert "x-tool-call-replayed" not in again.headers
        assert (await episode.changes())["total_changes"] == 1
        snap = await http.post(f"{base}/snapshots", json={"name": "after"}, headers=admin())
        assert snap.status_code == 201
        assert (await http.post(f"{base}/reset", headers=admin())).is_success
        assert "x-tool-call-replayed" not in (await _call(episode, "add_note", NOTE, "n-1")).headers
        # a snapshot taken after the call remembers its result
        assert (await http.post(f"{base}/snapshots/after/restore", headers=admin())).is_success
        replayed = await _call(episode, "add_note", NOTE, "n-1")
        assert replayed.headers["x-tool-call-replayed"] == "true"
        assert (await episode.changes())["total_changes"] == 1
    finally:
        await http.delete(f"/episodes/{episode.episode_id}", headers=admin())


async def test_a_retry_after_a_lost_answer_applies_the_call_once(
    http: httpx.AsyncClient, database_url: str
) -> None:
    episode = await _episode(http)
    headers = {**episode.auth, "X-Tool-Call-Id": "lost-1"}
    db = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(False)
    )
    try:
        # Hold the episode so that the call waits in the server; the client gives up before
        # the answer (as after a crash or a dropped connection), then the call commits.
        lock = db.transaction()
        await lock.start()
        await db.execute(
            "SELECT 1 FROM crm_meta.episode WHERE episode_id = $1 FOR UPDATE", episode.episode_id
        )
        async with httpx.AsyncClient(base_url=str(http.base_url), timeout=0.5) as impatient:
            with contextlib.suppress(httpx.TimeoutException):
                await impatient.post("/tools/add_note", json=NOTE, headers=headers)
                raise AssertionError("the call should have waited for the episode")
        await lock.rollback()
        for _ in range(500):
            if (await episode.changes())["total_changes"]:
                break
            await asyncio.sleep(0.01)
        assert (await episode.changes())["total_changes"] == 1
        # The client never saw that answer; its retry gets it without a second note.
        retried = await http.post("/tools/add_note", json=NOTE, headers=headers)
        assert retried.status_code == 200, retried.text
        assert retried.headers["x-tool-call-replayed"] == "true"
        assert (await episode.changes())["total_changes"] == 1
    finally:
        await db.close()
        await http.delete(f"/episodes/{episode.episode_id}", headers=admin())
