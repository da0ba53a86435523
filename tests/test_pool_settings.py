"""The CRM API and the agent runner size their Postgres pools from distinct variables,
with the defaults their docs state; the CRM API's schema pool is a third thing."""

from __future__ import annotations

import re

import pytest

from agent_runner.settings import AgentRunnerSettings
from crm_api.settings import CrmApiSettings
from tests.conftest import REPO_ROOT

VARIABLES = (
    "CRMBENCH_DB_POOL_SIZE",
    "CRMBENCH_DB_MAX_OVERFLOW",
    "CRMBENCH_CRM_API_DB_POOL_SIZE",
    "CRMBENCH_CRM_API_DB_MAX_OVERFLOW",
    "CRMBENCH_RUNNER_DB_POOL_SIZE",
    "CRMBENCH_POOL_SIZE",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _documented(doc: str, variable: str) -> str:
    """The default column of `variable`'s row in a docs/ configuration table."""
    text = (REPO_ROOT / "docs" / doc).read_text(encoding="utf-8")
    match = re.search(rf"^\| `{variable}` \| ([^|]+) \|", text, re.MULTILINE)
    assert match, f"{variable} is not in docs/{doc}"
    return match.group(1).strip()


def test_each_service_reads_its_own_pool_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMBENCH_CRM_API_DB_POOL_SIZE", "5")
    monkeypatch.setenv("CRMBENCH_CRM_API_DB_MAX_OVERFLOW", "3")
    monkeypatch.setenv("CRMBENCH_RUNNER_DB_POOL_SIZE", "6")
    monkeypatch.setenv("CRMBENCH_POOL_SIZE", "2")
    crm_api, runner = CrmApiSettings(), AgentRunnerSettings()
    assert (crm_api.crm_api_db_pool_size, crm_api.crm_api_db_max_overflow, crm_api.pool_size) == (
        5,
        3,
        2,
    )
    assert runner.runner_db_pool_size == 6


def test_the_shared_name_sets_neither_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRMBENCH_DB_POOL_SIZE", "3")
    monkeypatch.setenv("CRMBENCH_DB_MAX_OVERFLOW", "1")
    crm_api, runner = CrmApiSettings(), AgentRunnerSettings()
    assert (
        crm_api.crm_api_db_pool_size,
        crm_api.crm_api_db_max_overflow,
        runner.runner_db_pool_size,
    ) == (32, 8, 16)


def test_the_docs_state_the_defaults() -> None:
    crm_api, runner = CrmApiSettings(), AgentRunnerSettings()
    assert _documented("crm_api.md", "CRMBENCH_CRM_API_DB_POOL_SIZE") == str(
        crm_api.crm_api_db_pool_size
    )
    assert _documented("crm_api.md", "CRMBENCH_CRM_API_DB_MAX_OVERFLOW") == str(
        crm_api.crm_api_db_max_overflow
    )
    assert _documented("crm_api.md", "CRMBENCH_POOL_SIZE") == str(crm_api.pool_size)
    assert _documented("agent_runner.md", "CRMBENCH_RUNNER_DB_POOL_SIZE") == str(
        runner.runner_db_pool_size
    )


def test_an_old_pool_variable_is_named_at_start_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The old shared names are ignored; both services say so when they start, naming the
    replacement, instead of silently dropping the user's tuning."""
    from agent_runner.app import create_app as create_runner
    from crm_api.app import create_app as create_crm_api

    strong = "a-strong-admin-key-0123456789"
    with caplog.at_level("WARNING"):
        create_crm_api(CrmApiSettings(admin_key=strong))
        create_runner(
            AgentRunnerSettings(admin_key=strong, database_url="postgresql://x/y", work=False)
        )
    assert not [r for r in caplog.records if "no longer read" in r.getMessage()]

    monkeypatch.setenv("CRMBENCH_DB_POOL_SIZE", "3")
    monkeypatch.setenv("CRMBENCH_DB_MAX_OVERFLOW", "1")
    caplog.clear()
    with caplog.at_level("WARNING"):
        create_crm_api(CrmApiSettings(admin_key=strong))
        create_runner(
            AgentRunnerSettings(admin_key=strong, database_url="postgresql://x/y", work=False)
        )
    messages = [r.getMessage() for r in caplog.records if "no longer read" in r.getMessage()]
    assert (
        sum("CRMBENCH_DB_POOL_SIZE" in m and "CRMBENCH_RUNNER_DB_POOL_SIZE" in m for m in messages)
        == 2
    )
    assert sum("CRMBENCH_DB_MAX_OVERFLOW" in m for m in messages) == 2
