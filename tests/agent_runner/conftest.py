"""Fixtures: one fake server per LLM API on 127.0.0.1, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crmbench.cases_cli import load_corpus_into
from crmbench.local_services import running_verifier
from crmbench_clients.serving import serving_in_thread
from crmbench_contracts.cases import Case
from crmbench_corpus.store import load_index
from crmbench_llm import LLMProvider, PriceTable, ProviderConfig, make_provider
from tests.agent_runner.fake_llm_servers import (
    FakeApi,
    ScriptedAnswer,
    anthropic_app,
    anthropic_error,
    anthropic_reply,
    openai_app,
    openai_error,
    openai_reply,
)
from tests.conftest import ADMIN_KEY, RunningServer

PRICES_YAML = Path(__file__).resolve().parents[2] / "config" / "prices.yaml"

# Tiny waits keep retry tests fast; Retry-After is honoured regardless.
FAST_RETRIES: dict[str, Any] = {"backoff_base_seconds": 0.01, "timeout_seconds": 10.0}


@pytest.fixture(scope="session")
def prices() -> PriceTable:
    return PriceTable.from_yaml(PRICES_YAML)


@pytest.fixture(autouse=True)
def dummy_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-dummy-anthropic")


@dataclass
class ApiUnderTest:
    """One API's fake server plus how to script it and configure a provider for it."""

    provider: str
    fake: FakeApi
    base_url: str
    model: str

    def config(self, **overrides: Any) -> ProviderConfig:
        return ProviderConfig.model_validate(
            {
                "provider": self.provider,
                "model": self.model,
                "base_url": self.base_url,
                **FAST_RETRIES,
                **overrides,
            }
        )

    def make(self, prices: PriceTable, **overrides: Any) -> LLMProvider:
        return make_provider(self.config(**overrides), prices)

    def ok(self, text: str = "ok") -> ScriptedAnswer:
        if self.provider == "openai":
            return openai_reply(text)
        return anthropic_reply([{"type": "text", "text": text}])

    def error(self, status: int, headers: dict[str, str] | None = None) -> ScriptedAnswer:
        if self.provider == "openai":
            return openai_error(status, headers)
        return anthropic_error(status, headers)


@pytest.fixture(scope="session")
def openai_server() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    with serving_in_thread(openai_app(fake), "fake OpenAI API") as url:
        yield fake, url


@pytest.fixture(scope="session")
def anthropic_server() -> Iterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    with serving_in_thread(anthropic_app(fake), "fake Anthropic API") as url:
        yield fake, url


@pytest.fixture
def openai_api(openai_server: tuple[FakeApi, str]) -> ApiUnderTest:
    fake, url = openai_server
    fake.reset()
    # The OpenAI SDK's base URL includes the version path.
    return ApiUnderTest("openai", fake, f"{url}/v1", "gpt-4.1")


@pytest.fixture
def anthropic_api(anthropic_server: tuple[FakeApi, str]) -> ApiUnderTest:
    fake, url = anthropic_server
    fake.reset()
    return ApiUnderTest("anthropic", fake, url, "claude-sonnet-5-5")


@pytest.fixture(params=["openai", "anthropic"])
def api(request: pytest.FixtureRequest) -> ApiUnderTest:
    api: ApiUnderTest = request.getfixturevalue(f"{request.param}_api")
    return api


# ---------------------------------------------------------------------------- runs


@pytest.fixture(scope="session")
def corpus_index(database_url: str) -> dict[str, Case]:
    """The committed corpus, loaded into the session's database for POST /episodes."""
    load_corpus_into(database_url, None)
    return load_index()


@pytest.fixture(scope="session")
def verifier_url(crm_api: RunningServer, corpus_index: dict[str, Case]) -> Iterator[str]:
    with running_verifier(crm_api.base_url, ADMIN_KEY) as url:
        yield url


@dataclass
class RunServices:
    """Real services for runs: Postgres (queue, telemetry), the CRM API and the verifier."""

    database_url: str
    crm_api_url: str
    verifier_url: str
    cases: dict[str, Case]

    def env(self) -> dict[str, str]:
        """Environment that points a `crmbench run` subprocess at these services."""
        return {
            "DATABASE_URL": self.database_url,
            "CRMBENCH_CRM_API_URL": self.crm_api_url,
            "CRMBENCH_ADMIN_KEY": ADMIN_KEY,
            "CRMBENCH_VERIFIER_URL": self.verifier_url,
        }


@pytest.fixture(scope="session")
def run_services(
    database_url: str,
    crm_api: RunningServer,
    verifier_url: str,
    corpus_index: dict[str, Case],
) -> RunServices:
    return RunServices(database_url, crm_api.base_url, verifier_url, corpus_index)


def stratified_sample(cases: dict[str, Case], split: str = "eval", per_group: int = 1) -> list[str]:
    """Case ids covering every task category and every failure category of a split."""
    chosen: dict[str, list[str]] = {}
    for case in cases.values():
        if case.split != split:
            continue
        group = case.failure.category if case.failure else f"ok:{case.task_category}"
        members = chosen.setdefault(group, [])
        if len(members) < per_group:
            members.append(case.case_id)
    return [case_id for members in chosen.values() for case_id in members]
