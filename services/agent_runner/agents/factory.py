"""Builds the agent a run config names."""

from __future__ import annotations

from agent_runner.agents.base import Agent
from agent_runner.agents.baselines import OracleAgent, RandomAgent
from agent_runner.agents.llm_agent import LLMAgent, SystemPrompt
from agent_runner.run.config import ConfigError, RunConfig
from crmbench_llm import PriceTable, ProviderConfig, make_provider

SIMULATED_MODEL = "simulated-llm"


def simulated_provider_config(simulated_url: str) -> ProviderConfig:
    """The OpenAI-compatible provider config that talks to the simulated LLM at its /v1
    base URL (no key, short retries)."""
    return ProviderConfig(
        provider="openai",
        model=SIMULATED_MODEL,
        base_url=simulated_url,
        api_key_env=None,
        max_retries=2,
        backoff_base_seconds=0.1,
        timeout_seconds=60,
    )


def build_agent(config: RunConfig, *, simulated_url: str | None = None) -> Agent:
    """The run's agent. LLM agents read their API key from the environment now, so a
    missing key fails before any episode starts (MissingApiKey names the variable)."""
    if config.agent == "oracle":
        return OracleAgent()
    if config.agent == "random":
        return RandomAgent()
    prompt = SystemPrompt.from_file(config.resolve_path(config.prompt))
    prices = PriceTable.from_yaml(config.resolve_path(config.prices))
    if config.agent == "simulated":
        if simulated_url is None:
            raise ConfigError("the simulated agent needs the simulated LLM's URL")
        return LLMAgent(
            "simulated",
            make_provider(simulated_provider_config(simulated_url), prices),
            SIMULATED_MODEL,
            prompt,
            send_case_headers=True,
        )
    provider_config = config.provider_for(config.agent)
    return LLMAgent(
        config.agent,
        make_provider(provider_config, prices),
        provider_config.model,
        prompt,
        audience="teacher" if config.agent == "teacher" else "student",
    )


__all__ = ["ProviderConfig", "build_agent"]
