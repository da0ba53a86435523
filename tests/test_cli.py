"""The crmbench command line, against a real Postgres database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from crmbench.cli import app
from tests.conftest import RunningServer, admin, open_episode, start_server
from tests.crm_api.seed import payload


@pytest.fixture
def runner(fresh_database_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    return CliRunner()


def test_migrate_is_idempotent(runner: CliRunner) -> None:
    first = runner.invoke(app, ["db", "migrate"])
    assert first.exit_code == 0, first.output
    assert "loaded" in first.output and "already current" not in first.output
    second = runner.invoke(app, ["db", "migrate"])
    assert second.exit_code == 0 and "already current" in second.output


async def _make_history(server: RunningServer) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        ep = await open_episode(client, payload())
        await ep.ok("modify_opportunity", {"opportunity_id": "o-open", "stage": "Proposal"})
        snap = await client.post(f"/episodes/{ep.episode_id}/snapshots", json={"name": "s1"},
                                 headers=admin())  # fmt: skip
        assert snap.status_code == 201
        await ep.ok("add_note", {"entity_type": "Client", "entity_id": "c-acme", "content": "x"})
        return ep.episode_id, ep.token


async def _episode_state(server: RunningServer, episode_id: str, token: str) -> tuple[int, bytes]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        state = await client.get(f"/episodes/{episode_id}/state",
                                 headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        return state.status_code, state.content


def test_snapshot_reset_restore_is_byte_identical(
    runner: CliRunner, fresh_database_url: str, tmp_path: Path
) -> None:
    assert runner.invoke(app, ["db", "migrate"]).exit_code == 0
    server = start_server(fresh_database_url, pool_size=0)
    try:
        episode_id, token = asyncio.run(_make_history(server))
        _, state_before = asyncio.run(_episode_state(server, episode_id, token))
        first, second = tmp_path / "a.json", tmp_path / "b.json"
        dumped = runner.invoke(app, ["db", "snapshot", "--out", str(first)])
        assert dumped.exit_code == 0, dumped.output
        dump = json.loads(first.read_text())
        assert [e["registry"]["episode_id"] for e in dump["episodes"]] == [episode_id]
        reset = runner.invoke(app, ["db", "reset", "--yes"])
        assert reset.exit_code == 0 and "dropped 1 episode" in reset.output
        assert asyncio.run(_episode_state(server, episode_id, token))[0] == 401
        restored = runner.invoke(app, ["db", "restore", str(first)])
        assert restored.exit_code == 0, restored.output
        assert runner.invoke(app, ["db", "snapshot", "--out", str(second)]).exit_code == 0
        assert first.read_bytes() == second.read_bytes()
        # the restored episode answers to its old token, with its state and snapshot
        status, state_after = asyncio.run(_episode_state(server, episode_id, token))
        assert (status, state_after) == (200, state_before)
    finally:
        server.stop()


def test_tools_export_matches_the_served_definitions(crm_api: RunningServer) -> None:
    runner = CliRunner()
    for fmt in ("openai", "anthropic"):
        exported = runner.invoke(app, ["tools", "export", "--format", fmt])
        assert exported.exit_code == 0, exported.output
        served = httpx.get(f"{crm_api.base_url}/tools", params={"format": fmt}).json()
        assert json.loads(exported.stdout) == served
        assert len(served) == 37
    anthropic = httpx.get(f"{crm_api.base_url}/tools", params={"format": "anthropic"}).json()
    create = next(t for t in anthropic if t["name"] == "create_new_opportunity")
    schema = create["input_schema"]
    assert set(schema["required"]) == {"name", "client_id", "amount", "stage"}
    assert schema["properties"]["stage"]["enum"][0] == "Prospecting"
    assert schema["additionalProperties"] is False
    assert "$ref" not in json.dumps(anthropic)
    bad = httpx.get(f"{crm_api.base_url}/tools", params={"format": "xml"})
    assert bad.status_code == 422


def test_errors_are_one_line_without_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["db", "restore", str(tmp_path / "nope.json")])
    assert missing.exit_code == 1 and "error:" in missing.output
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    bad = runner.invoke(app, ["db", "restore", str(garbage)])
    assert bad.exit_code == 1 and "is not JSON" in bad.output
    unknown = runner.invoke(app, ["tools", "export", "--format", "xml"])
    assert unknown.exit_code == 1 and "unknown format" in unknown.output
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    down = runner.invoke(app, ["db", "migrate"])
    assert down.exit_code == 1 and "error:" in down.output
    for result in (missing, bad, unknown, down):
        assert "Traceback" not in result.output
