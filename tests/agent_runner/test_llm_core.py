"""The scripted provider, the price table, the retry policy's arithmetic, and what the
LLM layer and its users may import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crmbench_llm import (
    Completion,
    LLMError,
    Message,
    PriceTable,
    ProviderConfig,
    ScriptedProvider,
    ToolCall,
    ToolSpec,
    Usage,
    make_provider,
)
from crmbench_llm.base import RetryPolicy, parse_retry_after

# (h) the scripted provider


async def test_scripted_replies_in_order_and_records_calls() -> None:
    call = ToolCall(id="t1", name="find_contact", arguments={"email": "a@b.c"})
    provider = ScriptedProvider(["first", Message.assistant(tool_calls=[call])])
    tool = ToolSpec(name="find_contact", description="Finds a contact.")

    first = await provider.complete([Message.user("one")], [tool], system="sys")
    second = await provider.complete([Message.user("two")])

    assert first.message.content == "first" and first.stop_reason == "end"
    assert second.message.tool_calls == [call] and second.stop_reason == "tool_calls"
    assert first.provider == "scripted" and first.cost_usd == 0.0
    assert [c.messages[-1].content for c in provider.calls] == ["one", "two"]
    assert provider.calls[0].tools == [tool] and provider.calls[0].system == "sys"
    with pytest.raises(LLMError) as raised:
        await provider.complete([Message.user("three")])
    assert raised.value.code == "script_exhausted"


async def test_scripted_rules_match_the_last_user_message() -> None:
    canned = Completion(
        message=Message.assistant("refund policy"),
        stop_reason="end",
        usage=Usage(input_tokens=3, output_tokens=2),
        model="m",
        provider="scripted",
    )
    provider = ScriptedProvider().when(lambda text: "refund" in text, canned).then("fallback")
    conversation = [
        Message.user("a refund please"),
        Message.assistant("ok"),
        Message.tool("x", "r"),
    ]

    assert await provider.complete(conversation) == canned
    assert await provider.complete(conversation) == canned  # rules stay in force
    assert (await provider.complete([Message.user("hello")])).message.content == "fallback"


def test_factory_builds_a_scripted_provider_without_network(prices: PriceTable) -> None:
    provider = make_provider(ProviderConfig(provider="scripted", model="fake"), prices)
    assert isinstance(provider, ScriptedProvider) and provider.model == "fake"


# Prices and config


def test_shipped_price_table(prices: PriceTable) -> None:
    gpt = prices.price("gpt-4.1")
    claude = prices.price("claude-sonnet-4-5")
    assert gpt is not None and claude is not None
    assert (gpt.input_per_mtok, gpt.output_per_mtok, gpt.cached_input_per_mtok) == (2, 8, 0.5)
    assert (claude.input_per_mtok, claude.output_per_mtok) == (3, 15)
    assert claude.cached_input_per_mtok == 0.3


def test_cost_without_a_cached_rate_bills_cached_input_as_input() -> None:
    table = PriceTable.model_validate({"m": {"input_per_mtok": 1, "output_per_mtok": 2}})
    usage = Usage(input_tokens=1_000_000, output_tokens=500_000, cached_input_tokens=400_000)
    assert table.cost(usage, "m") == pytest.approx(2.0)
    assert table.cost(usage, "unknown") is None


def test_config_defaults_and_rejects_unknown_fields() -> None:
    assert ProviderConfig(provider="openai", model="m").api_key_env == "OPENAI_API_KEY"
    assert ProviderConfig(provider="anthropic", model="m").api_key_env == "ANTHROPIC_API_KEY"
    with pytest.raises(ValueError):
        ProviderConfig.model_validate({"provider": "openai", "model": "m", "api_key": "sk-x"})


# Retry policy


def test_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "Retry-After": "9"}) == 0.25
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base_seconds=1.0, backoff_max_seconds=5.0)
    assert [policy.delay(n, None, lambda: 1.0) for n in range(4)] == [1.0, 2.0, 4.0, 5.0]
    assert policy.delay(1, None, lambda: 0.0) == 1.0  # jitter spans the upper half
    assert policy.delay(0, 3.0, lambda: 0.0) == 3.0  # Retry-After wins over backoff
    assert policy.delay(0, 60.0, lambda: 0.0) == 5.0


# (i) the LLM layer stands alone: it and the modules built on it load no service code

_LOADED_PACKAGES = """
import importlib, json, sys
for module in sys.argv[1:]:
    importlib.import_module(module)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (
            ["crmbench_llm", "crmbench_llm.openai_provider", "crmbench_llm.anthropic_provider"],
            {"agent_runner", "verifier", "crm_api", "crmbench"},
        ),
        (["verifier.llm_judges"], {"agent_runner", "crm_api", "crmbench"}),
        (["agent_runner.simulated"], {"crm_api", "crmbench"}),
    ],
)
def test_llm_layer_and_its_users_load_no_other_service(
    modules: list[str], forbidden: set[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOADED_PACKAGES, *modules],
        capture_output=True,
        text=True,
        check=True,
    )
    assert forbidden.isdisjoint(json.loads(result.stdout)), result.stdout
