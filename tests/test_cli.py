"""The crmbench command line, against a real Postgres database."""

from __future__ import annotations

import asyncio
import io
import json
import os
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


# ---------------------------------------------------------------------------- issue 12: 3, 4


KEY_VARIABLES = ("CRMBENCH_ADMIN_KEY", "CRMBENCH_VERIFIER_KEY", "CRMBENCH_RUNNER_KEY")


@pytest.mark.parametrize(
    ("command", "env", "problem"),
    [
        (["serve", "crm-api"], {"CRMBENCH_ADMIN_KEY": "change-me"}, "CRMBENCH_ADMIN_KEY is a"),
        (["serve", "crm-api"], {"CRMBENCH_ADMIN_KEY": ""}, "CRMBENCH_ADMIN_KEY is empty"),
        (["serve", "verifier"], {"CRMBENCH_ADMIN_KEY": "admin"}, "CRMBENCH_ADMIN_KEY is a"),
        (
            ["serve", "verifier"],
            {"CRMBENCH_VERIFIER_KEY": "tiny-key"},
            "CRMBENCH_VERIFIER_KEY is too short (8 characters, at least 16)",
        ),
        (
            ["serve", "agent-runner"],
            {"CRMBENCH_RUNNER_KEY": "secret"},
            "CRMBENCH_RUNNER_KEY is a well-known placeholder",
        ),
        # The admin key, which the others default to, is named as itself (issue 12 review).
        (
            ["serve", "agent-runner"],
            {"CRMBENCH_ADMIN_KEY": "change-me"},
            "CRMBENCH_ADMIN_KEY is a well-known placeholder",
        ),
        (
            ["serve", "agent-runner"],
            {
                "CRMBENCH_ADMIN_KEY": "change-me",
                "CRMBENCH_RUNNER_KEY": "a-strong-runner-key-0123456789",
                "CRMBENCH_CRM_API_URL": "http://127.0.0.1:1",
            },
            "CRMBENCH_ADMIN_KEY is a well-known placeholder",
        ),
        (
            ["serve", "agent-runner"],
            {"CRMBENCH_ADMIN_KEY": "a-strong-admin-key-0123456789", "CRMBENCH_VERIFIER_KEY": "x"},
            "CRMBENCH_VERIFIER_KEY is too short (1 characters, at least 16)",
        ),
    ],
)
def test_serve_refuses_a_weak_key_in_one_line_before_starting(
    monkeypatch: pytest.MonkeyPatch, command: list[str], env: dict[str, str], problem: str
) -> None:
    for name in (*KEY_VARIABLES, "CRMBENCH_CRM_API_URL", "CRMBENCH_VERIFIER_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Nothing may be reached before the key is checked: no database, no port.
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = CliRunner().invoke(app, [*command, "--port", "1"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: {problem}"), result.output
    assert result.output.count("\n") == 1 and "listening" not in result.output


# ---------------------------------------------------------------------------- issue 12: 15, 17


def test_a_bad_flag_value_names_the_flag_and_the_allowed_values(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--agent", "gpt4", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert result.output.startswith("error: --agent 'gpt4': Input should be 'student'")
    assert "'simulated'" in result.output and "run.yaml" not in result.output
    split = CliRunner().invoke(app, ["run", "--split", "evl", "--out", str(tmp_path / "r")])
    assert split.output.startswith("error: --split 'evl':") and "'holdout'" in split.output
    assert not (tmp_path / "r").exists()


def test_an_unknown_case_id_fails_before_anything_is_created(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["run", "--agent", "simulated", "--cases", "CRM-0001", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "unknown case ids: CRM-0001" in result.output
    assert "did you mean CRM-00001?" in result.output
    assert not out.exists()  # no folder, no lock file


def test_usage_errors_have_the_style_of_every_other_error() -> None:
    runner = CliRunner()
    for args in (["run", "--bogus"], ["nosuch"], ["run", "--limit", "0"], ["results"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "\nerror: " in result.output, result.output
        assert "Error" not in result.output and "╭" not in result.output
    own = runner.invoke(app, ["tools", "export", "--format", "xml"])
    assert own.exit_code == 1 and own.output.startswith("error: unknown format")


async def _open_case(base_url: str, case_id: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        return await client.post("/episodes", json={"case_id": case_id}, headers=admin())


def test_an_unknown_case_id_on_post_episodes_says_to_check_the_id(
    crm_api: RunningServer,
) -> None:
    response = asyncio.run(_open_case(crm_api.base_url, "CRM-0001"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["field"] == "case_id"
    assert "check the case id" in error["message"] and "CRM-00001" in error["message"]
    # loading the corpus is advice for a database that never had one, not for a typo
    assert "Only if no case was ever loaded" in error["message"]


def test_a_simulated_run_labels_its_cost_and_both_commands_take_a_folder_or_a_run_id(
    runner: CliRunner, tmp_path: Path
) -> None:
    from agent_runner.reports.statistics import SIMULATED_COST_NOTE

    out = tmp_path / "sim"
    ran = runner.invoke(
        app, ["run", "--agent", "simulated", "--limit", "2", "--quiet", "--out", str(out)]
    )
    assert ran.exit_code == 0, ran.output
    assert "simulated cost $" in ran.output and SIMULATED_COST_NOTE in ran.output
    run_id = json.loads((out / "run.json").read_text())["run_id"]

    text = runner.invoke(app, ["results", str(out)])
    assert text.exit_code == 0, text.output
    assert "simulated cost (USD)" in text.output and SIMULATED_COST_NOTE in text.output
    assert "1 trial per case" in text.output
    by_folder = json.loads(runner.invoke(app, ["results", str(out), "--json"]).stdout)
    assert by_folder["cost"]["simulated_note"] == SIMULATED_COST_NOTE
    assert by_folder["trials"] == 1 and by_folder["run"]["trials"] == 1  # not null
    by_id = runner.invoke(app, ["results", run_id, "--json"])
    assert by_id.exit_code == 0, by_id.output
    assert json.loads(by_id.stdout)["pass_rates"] == by_folder["pass_rates"]
    assert json.loads(by_id.stdout)["run"]["trials"] == 1

    exports = [
        runner.invoke(app, ["export", *args]).stdout
        for args in ([str(out)], [run_id], ["--run", run_id], ["--run", run_id, "--dir", str(out)])
    ]
    assert len(exports[0].splitlines()) == 2
    assert all(sorted(e.splitlines()) == sorted(exports[0].splitlines()) for e in exports)
    missing = runner.invoke(app, ["results", "no-such-run"])
    assert missing.exit_code == 1 and "no run 'no-such-run'" in missing.output


def test_the_progress_bar_labels_a_simulated_cost() -> None:
    from rich.console import Console

    from crmbench.run_cli import ProgressDisplay

    shown = []
    for simulated in (True, False):
        display = ProgressDisplay(4, True, simulated=simulated)
        display.update(done=2, passed=1, harness_errors=0, cost=67.31)
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(display.progress.get_renderable())
        shown.append(console.export_text())
    assert "simulated cost $67.31" in shown[0]
    assert "simulated" not in shown[1] and "cost $67.31" in shown[1]


# ---------------------------------------------------------------------------- issue 12: 7, 8


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("garbage", "cannot be parsed"),
        ("postgresql://u@127.0.0.1:notaport/db", "port is not a number"),
        ("mysql://u@127.0.0.1/db", "must be a PostgreSQL URL"),
    ],
)
def test_a_malformed_database_url_is_one_line_naming_the_problem(
    monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    for command in (["db", "migrate"], ["db", "reset", "--yes"], ["serve", "crm-api"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: DATABASE_URL"), result.output
        assert problem in lines[0]


async def _fill_with_episodes(url: str) -> tuple[int, int]:
    """Creates episodes (through the service's own path) until dropping all of them in one
    transaction would need more locks than the server's lock table holds; returns (count,
    the lock table's nominal size)."""
    import sqlalchemy as sa

    from crm_api.database import create_engine
    from crm_api.episodes.schemas import EpisodeCreate
    from crm_api.episodes.service import EpisodeManager

    engine = create_engine(url, pool_size=4, max_overflow=0)
    try:
        manager = EpisodeManager(
            engine,
            default_ttl=3600,
            pool_size=0,
            admin_key="k",
            max_live=10_000,
            retry_after_seconds=1,
        )
        await manager.create(EpisodeCreate())
        async with engine.connect() as conn:
            settings = (
                await conn.execute(
                    sa.text(
                        "SELECT current_setting('max_locks_per_transaction')::int"
                        " * current_setting('max_connections')::int"
                    )
                )
            ).scalar_one()
            await conn.rollback()
            await conn.begin()
            schema = (
                await conn.execute(sa.text("SELECT schema_name FROM crm_meta.episode"))
            ).scalar_one()
            await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            per_schema = (
                await conn.execute(
                    sa.text("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()")
                )
            ).scalar_one()
            await conn.rollback()
        # Postgres sizes the table with some slack (here one transaction ran out at about
        # twice the nominal size), so aim well past it.
        wanted = 2 * int(settings) // int(per_schema) + 20
        await asyncio.gather(*(manager.create(EpisodeCreate()) for _ in range(wanted - 1)))
        return wanted, int(settings)
    finally:
        await engine.dispose()


def test_db_reset_drops_more_episodes_than_the_lock_table_holds(runner: CliRunner) -> None:
    assert runner.invoke(app, ["db", "migrate"]).exit_code == 0
    url = os.environ["DATABASE_URL"]
    created, lock_table = asyncio.run(_fill_with_episodes(url))
    assert created * 100 > lock_table  # each schema takes well over 100 locks to drop
    reset = runner.invoke(app, ["db", "reset", "--yes"])
    assert reset.exit_code == 0, reset.output
    assert f"dropped {created} episode(s)" in reset.output
    assert asyncio.run(_schemas_left(url)) == 0


async def _schemas_left(url: str) -> int:
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'ep\\_%'"
                " OR nspname LIKE 'pool\\_%' OR nspname LIKE 'snap\\_%'"
            )
        )
    finally:
        await conn.close()
