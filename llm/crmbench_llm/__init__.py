"""LLM providers behind one interface: OpenAI chat completions (any compatible base URL),
Anthropic messages, and a scripted fake; built from configuration by `make_provider`."""

from __future__ import annotations

from crmbench_llm.base import LLMError, LLMProvider, MissingApiKey
from crmbench_llm.config import ModelPrice, PriceTable, ProviderConfig
from crmbench_llm.scripted import ScriptedCall, ScriptedProvider
from crmbench_llm.types import Completion, Message, ToolCall, ToolSpec, Usage


def make_provider(config: ProviderConfig, prices: PriceTable) -> LLMProvider:
    """The provider `config` names. Reads its API key from the environment now, so a
    missing key fails here (MissingApiKey) rather than at the first call. A scripted
    provider starts with an empty script; fill it with `then`/`when`."""
    if config.provider == "openai":
        from crmbench_llm.openai_provider import OpenAIProvider

        return OpenAIProvider(config, prices)
    if config.provider == "anthropic":
        from crmbench_llm.anthropic_provider import AnthropicProvider

        return AnthropicProvider(config, prices)
    return ScriptedProvider(model=config.model)


__all__ = [
    "Completion",
    "LLMError",
    "LLMProvider",
    "Message",
    "MissingApiKey",
    "ModelPrice",
    "PriceTable",
    "ProviderConfig",
    "ScriptedCall",
    "ScriptedProvider",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "make_provider",
]
