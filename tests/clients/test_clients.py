"""The service clients against the real CRM API and verifier: episodes, tool calls, the
change log and snapshots, scoring, the blocking clients, and how failures map onto the
typed errors (a refusal keeps the service's code; no answer is ServiceUnavailable)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from crmbench.cases_cli import load_corpus_into
from crmbench.local_services import running_verifier
from crmbench_clients import (
    CrmApiClient,
    InvalidResponse,
    RequestRefused,
    ServiceFailed,
    ServiceUnavailable,
    SyncCrmApiClient,
    SyncVerifierClient,
    VerifierClient,
)
from crmbench_clients.serving import free_port, serving_in_thread
from crmbench_corpus.replay import replay
from crmbench_corpus.store import load_index
from tests.conftest import ADMIN_KEY, RunningServer
from tests.crm_api.seed import SEED, payload

CASE_ID = "CRM-00002"
"""A golden case whose reference actions change the CRM."""


@pytest.fixture(scope="module")
def verifier_url(crm_api: RunningServer, database_url: str) -> Iterator[str]:
    load_corpus_into(database_url, None)
    with running_verifier(crm_api.base_url, ADMIN_KEY) as url:
        yield url


@pytest.fixture
async def crm(crm_api: RunningServer) -> AsyncIterator[CrmApiClient]:
    async with CrmApiClient(crm_api.base_url, ADMIN_KEY) as client:
        yield client


def dead_url() -> str:
    """A local port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------------------- the CRM API


async def test_tools_in_both_dialects_name_the_same_tools(crm: CrmApiClient) -> None:
    tools = await crm.tools()
    anthropic = await crm.tool_definitions("anthropic")
    names = [tool.name for tool in tools]
    assert names == sorted(names) and len(names) > 30
    assert names == [entry["name"] for entry in anthropic]
    search = next(tool for tool in tools if tool.name == "client_search")
    assert search.description and "criteria" in search.parameters["properties"]
    openapi = await crm.openapi()
    assert {f"/tools/{name}" for name in names} <= set(openapi["paths"])


async def test_a_tool_call_result_a_refusal_and_the_change_log(crm: CrmApiClient) -> None:
    opened = await crm.open_episode(
        today=payload()["today"], actor=payload()["actor"], seed=SEED, ttl_seconds=600
    )
    try:
        assert opened.body["today"] == "2025-11-12" and opened.body["actor"]["role"] == "sales_rep"
        moved = await crm.call_tool(
            opened.token,
            "modify_opportunity",
            {"opportunity_id": "o-open", "probability": 40},
            tool_call_id="call-1",
        )
        assert moved.ok and moved.status == 200 and moved.error is None
        assert moved.body["probability"] == 40 and moved.latency_ms > 0
        # A refusal is an outcome with the CRM API's error, not an exception.
        refused = await crm.call_tool(
            opened.token, "modify_opportunity", {"opportunity_id": "o-won", "probability": 5}
        )
        assert not refused.ok and refused.status == 409
        assert refused.error is not None and refused.error["code"] == "MODIFY_CLOSED_OPPORTUNITY"
        assert refused.as_error().code == "MODIFY_CLOSED_OPPORTUNITY"

        by_call = await crm.changes_by_tool_call(opened.episode_id)
        [change] = by_call["call-1"]
        assert (change.table, change.key, change.op) == ("opportunity", "o-open", "UPDATE")
        log = await crm.episode_changes(opened.episode_id)
        assert log["total_changes"] == 1
        state = await crm.episode_state(opened.episode_id, ["opportunity"])
        assert set(state["tables"]) == {"opportunity"}
        row = next(r for r in state["tables"]["opportunity"] if r["opportunity_id"] == "o-open")
        assert row["probability"] == 40
    finally:
        assert await crm.close_episode(opened.episode_id) is True
    assert await crm.close_episode(opened.episode_id) is False  # gone already: not an error


async def test_snapshots_restore_an_episode(crm: CrmApiClient) -> None:
    opened = await crm.open_episode(**payload())
    try:
        await crm.create_snapshot(opened.episode_id, "start")
        assert [s["name"] for s in (await crm.snapshots(opened.episode_id))["snapshots"]] == [
            "start"
        ]
        await crm.call_tool(
            opened.token, "modify_client", {"client_id": "c-beta", "status": "Active"}
        )
        await crm.restore_snapshot(opened.episode_id, "start")
        state = await crm.episode_state(opened.episode_id, ["client"])
        beta = next(r for r in state["tables"]["client"] if r["client_id"] == "c-beta")
        assert beta["status"] != "Active"
        await crm.delete_snapshot(opened.episode_id, "start")
        assert (await crm.snapshots(opened.episode_id))["snapshots"] == []
        listed = await crm.list_episodes(limit=500)
        assert opened.episode_id in {e["episode_id"] for e in listed["episodes"]}
        assert (await crm.episode(opened.episode_id))["episode_id"] == opened.episode_id
    finally:
        await crm.close_episode(opened.episode_id)


# ---------------------------------------------------------------------------- error mapping


async def test_a_refusal_is_a_request_refused_with_the_services_code(
    crm_api: RunningServer, crm: CrmApiClient
) -> None:
    async with CrmApiClient(crm_api.base_url, "not-the-key") as wrong:
        with pytest.raises(RequestRefused) as forbidden:
            await wrong.open_episode(**payload())
    assert (forbidden.value.service, forbidden.value.status) == ("crm_api", 403)
    assert forbidden.value.code == "FORBIDDEN" and forbidden.value.method == "POST"
    assert str(forbidden.value).startswith("crm_api 403 FORBIDDEN: ")

    with pytest.raises(RequestRefused) as missing:
        await crm.episode_state("ep_0000000000000000")
    assert (missing.value.status, missing.value.code) == (404, "EPISODE_NOT_FOUND")

    opened = await crm.open_episode(**payload())
    try:
        with pytest.raises(RequestRefused) as bad_table:
            await crm.episode_state(opened.episode_id, ["nope"])
    finally:
        await crm.close_episode(opened.episode_id)
    refused = bad_table.value
    assert (refused.status, refused.code, refused.field) == (422, "INVALID_ENUM", "tables")
    assert refused.allowed is not None and "client" in refused.allowed


async def test_a_closed_port_is_service_unavailable() -> None:
    url = dead_url()
    async with CrmApiClient(url, ADMIN_KEY, timeout=5) as crm:
        with pytest.raises(ServiceUnavailable) as down:
            await crm.tools()
        # Tool calls too: no answer is never an outcome the agent sees.
        with pytest.raises(ServiceUnavailable):
            await crm.call_tool("token", "client_search", {})
    assert down.value.status is None and down.value.code == "UNREACHABLE"
    assert down.value.service == "crm_api" and url in down.value.message
    async with VerifierClient(url, ADMIN_KEY, timeout=5) as verifier:
        with pytest.raises(ServiceUnavailable) as verifier_down:
            await verifier.verify(CASE_ID, "ep_0000000000000000", "")
    assert verifier_down.value.service == "verifier" and verifier_down.value.status is None
    with SyncCrmApiClient(url, timeout=5) as sync_crm, pytest.raises(ServiceUnavailable):
        sync_crm.health()


@pytest.fixture(scope="module")
def misbehaving_url() -> Iterator[str]:
    """A server that fails the ways a proxy or a broken service would."""
    app = FastAPI()

    @app.get("/tools")
    async def not_json() -> PlainTextResponse:
        return PlainTextResponse("<html>gateway</html>")

    @app.post("/episodes")
    async def crashes() -> JSONResponse:
        body = {"error": {"code": "INTERNAL", "field": None, "message": "boom"}}
        return JSONResponse(body, status_code=500)

    @app.post("/tools/{name}")
    async def bad_gateway(name: str) -> PlainTextResponse:
        return PlainTextResponse("bad gateway", status_code=502)

    @app.post("/verify")
    async def not_a_record() -> dict[str, Any]:
        return {"score": "high"}

    with serving_in_thread(app, "misbehaving service") as url:
        yield url


async def test_server_errors_and_wrong_answers_are_typed(misbehaving_url: str) -> None:
    async with CrmApiClient(misbehaving_url, ADMIN_KEY) as crm:
        with pytest.raises(InvalidResponse) as not_json:
            await crm.tools()
        with pytest.raises(ServiceFailed) as crashed:
            await crm.open_episode("CRM-00001")
        with pytest.raises(ServiceFailed) as gateway:
            await crm.call_tool("token", "client_search", {})
    assert (not_json.value.status, not_json.value.code) == (200, "INVALID_RESPONSE")
    assert (crashed.value.status, crashed.value.code, crashed.value.message) == (
        500,
        "INTERNAL",
        "boom",
    )
    assert (gateway.value.status, gateway.value.code) == (502, "UNEXPECTED_RESPONSE")
    with (
        SyncVerifierClient(misbehaving_url, ADMIN_KEY) as verifier,
        pytest.raises(InvalidResponse),
    ):
        verifier.verify(CASE_ID, "ep_0000000000000000", "")


# ---------------------------------------------------------------------------- the verifier


async def test_the_verifier_scores_a_replayed_reference(
    crm: CrmApiClient, verifier_url: str
) -> None:
    case = load_index()[CASE_ID]
    opened = await crm.open_episode(CASE_ID)
    try:
        await replay(crm, opened.token, case.expected.reference_actions)
        async with VerifierClient(verifier_url, ADMIN_KEY) as verifier:
            record = await verifier.verify(
                CASE_ID, opened.episode_id, case.expected.reference_reply
            )
            state = await crm.episode_state(opened.episode_id)
            changes = await crm.episode_changes(opened.episode_id)
            inline = await verifier.verify_state(
                CASE_ID, state, changes, case.expected.reference_reply
            )
            with pytest.raises(RequestRefused) as unknown:
                await verifier.verify("NO-SUCH-CASE", opened.episode_id, "")
    finally:
        await crm.close_episode(opened.episode_id)
    assert record.case_id == CASE_ID and record.score == 1.0 and record.passed
    assert inline.score == record.score
    assert (unknown.value.service, unknown.value.status) == ("verifier", 404)
    assert (unknown.value.code, unknown.value.field) == ("CASE_NOT_FOUND", "case_id")


async def test_the_verifier_client_sends_its_key_and_a_wrong_one_is_refused(
    crm: CrmApiClient, verifier_url: str
) -> None:
    opened = await crm.open_episode(CASE_ID)
    try:
        for key, status, code in (
            (None, 401, "UNAUTHORIZED"),
            ("not-the-verifier-key-0123456789", 403, "FORBIDDEN"),
            (opened.token, 403, "FORBIDDEN"),  # an episode token never gets a score
        ):
            async with VerifierClient(verifier_url, key) as verifier:
                with pytest.raises(RequestRefused) as refused:
                    await verifier.verify(CASE_ID, opened.episode_id, "")
            assert (refused.value.status, refused.value.code) == (status, code), key
        with SyncVerifierClient(verifier_url, None) as sync_verifier:
            with pytest.raises(RequestRefused) as sync_refused:
                sync_verifier.verify(CASE_ID, opened.episode_id, "")
            assert sync_verifier.health()["status"] == "ok"  # /health needs no key
        assert sync_refused.value.status == 401
    finally:
        await crm.close_episode(opened.episode_id)


# ---------------------------------------------------------------------------- blocking clients


def test_the_blocking_clients_play_an_episode(crm_api: RunningServer, verifier_url: str) -> None:
    with (
        SyncCrmApiClient(crm_api.base_url, ADMIN_KEY) as crm,
        SyncVerifierClient(verifier_url, ADMIN_KEY) as verifier,
    ):
        assert [tool.name for tool in crm.tools()] == [
            entry["function"]["name"] for entry in crm.tool_definitions()
        ]
        opened = crm.open_episode(CASE_ID)
        try:
            found = crm.call_tool(opened.token, "client_search", {}, tool_call_id="step-1")
            assert found.ok and "items" in found.body
            refused = crm.call_tool(opened.token, "no_such_tool", {})
            assert refused.status == 404 and refused.error is not None
            assert refused.error["code"] == "UNKNOWN_TOOL"
            assert crm.episode_changes(opened.episode_id)["total_changes"] == 0
            assert "tables" in crm.episode_state(opened.episode_id, ["client"])
            record = verifier.verify(CASE_ID, opened.episode_id, "", transcript=[])
        finally:
            assert crm.close_episode(opened.episode_id) is True
        assert record.case_id == CASE_ID and not record.passed
        assert verifier.health()["status"] == "ok"
        # The episode's token died with it: an outcome, typed on demand.
        dropped = crm.call_tool(opened.token, "client_search", {})
    gone = dropped.as_error()
    assert dropped.status == 401 and isinstance(gone, RequestRefused)
    assert (gone.service, gone.code) == ("crm_api", "UNAUTHORIZED")


def test_clients_drop_idle_connections_well_before_our_servers_close_them() -> None:
    # Equal timeouts race: a request sent as the server closes the idle connection fails
    # with a ReadError. The client must give up an idle connection first.
    from crmbench_clients.calls import SERVER_KEEP_ALIVE_SECONDS, connection_limits

    limits = connection_limits(8)
    assert limits.keepalive_expiry is not None
    assert limits.keepalive_expiry <= SERVER_KEEP_ALIVE_SECONDS / 2
