"""Fixtures: one fake server per LLM API on 127.0.0.1, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent_runner.llm import LLMProvider, PriceTable, ProviderConfig, make_provider
from crmbench.local_services import serving_in_thread
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
    return ApiUnderTest("anthropic", fake, url, "claude-sonnet-4-5")


@pytest.fixture(params=["openai", "anthropic"])
def api(request: pytest.FixtureRequest) -> ApiUnderTest:
    api: ApiUnderTest = request.getfixturevalue(f"{request.param}_api")
    return api
