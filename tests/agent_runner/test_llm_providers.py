"""The OpenAI and Anthropic providers against local fake servers speaking each API."""

from __future__ import annotations

import json
from typing import Any

import pytest

from crmbench_llm import (
    LLMError,
    Message,
    MissingApiKey,
    PriceTable,
    ProviderConfig,
    ToolCall,
    ToolSpec,
    make_provider,
)
from tests.agent_runner.conftest import ApiUnderTest
from tests.agent_runner.fake_llm_servers import anthropic_reply, openai_reply

# The SDK warns about model names it knows to be retiring; the fakes do not care.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

FIND_CONTACT = ToolSpec(
    name="find_contact",
    description="Finds a contact by email.",
    parameters={
        "type": "object",
        "properties": {"email": {"type": "string"}},
        "required": ["email"],
    },
)


# (a) plain text reply: fields, usage with cached tokens, cost from the price table


async def test_openai_text_reply_usage_and_cost(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    openai_api.fake.script(
        openai_reply("Hello.", prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    )
    provider = openai_api.make(prices, temperature=0.0, max_tokens=321)

    completion = await provider.complete([Message.user("Hi")], system="Be brief.")

    assert completion.message == Message.assistant("Hello.")
    assert completion.stop_reason == "end"
    assert completion.provider == "openai"
    assert completion.model == "gpt-4.1-2025-04-14"
    assert completion.usage.input_tokens == 1000
    assert completion.usage.output_tokens == 200
    assert completion.usage.cached_input_tokens == 400
    # 600 fresh input at $2, 400 cached at $0.50, 200 output at $8, per million.
    assert completion.cost_usd == pytest.approx(0.003)
    assert completion.latency_ms > 0
    (received,) = openai_api.fake.received
    assert received.headers["authorization"] == "Bearer sk-dummy-openai"
    assert received.body["model"] == "gpt-4.1"
    assert received.body["temperature"] == 0.0
    assert received.body["max_completion_tokens"] == 321
    assert received.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert "tools" not in received.body


async def test_anthropic_text_reply_usage_and_cost(
    anthropic_api: ApiUnderTest, prices: PriceTable
) -> None:
    anthropic_api.fake.script(
        anthropic_reply(
            [{"type": "text", "text": "Hello."}],
            input_tokens=600,
            output_tokens=200,
            cache_read_input_tokens=400,
        )
    )
    provider = anthropic_api.make(prices, max_tokens=321)

    completion = await provider.complete(
        [Message.system("Use the tools."), Message.user("Hi")], system="Be brief."
    )

    assert completion.message == Message.assistant("Hello.")
    assert completion.stop_reason == "end"
    assert completion.provider == "anthropic"
    assert completion.model == "claude-sonnet-4-5-20250929"
    # Anthropic's input_tokens excludes cache reads; ours counts all input.
    assert completion.usage.input_tokens == 1000
    assert completion.usage.output_tokens == 200
    assert completion.usage.cached_input_tokens == 400
    # 600 fresh input at $3, 400 cached at $0.30, 200 output at $15, per million.
    assert completion.cost_usd == pytest.approx(0.00492)
    (received,) = anthropic_api.fake.received
    # SDK releases differ in the header that carries the key.
    assert "sk-dummy-anthropic" in (
        received.headers.get("x-api-key", ""),
        received.headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert received.body["model"] == "claude-sonnet-4-5"
    assert received.body["max_tokens"] == 321
    assert received.body["system"] == "Be brief.\n\nUse the tools."
    assert received.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    ]


async def test_model_without_a_price_has_no_cost(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    openai_api.fake.script(openai_reply("hi", model="local-llama"))
    provider = openai_api.make(prices, model="local-llama")

    completion = await provider.complete([Message.user("Hi")])

    assert completion.cost_usd is None
    assert completion.usage.input_tokens == 10


# (b) tool call round trip; the fake checks the request shape of each API


def _check_openai_tool_result(body: dict[str, Any]) -> None:
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "find_contact",
                "description": "Finds a contact by email.",
                "parameters": FIND_CONTACT.parameters,
            },
        }
    ], body["tools"]
    user, assistant, tool = body["messages"]
    assert user == {"role": "user", "content": "Find ana@example.com"}
    assert assistant["role"] == "assistant"
    (call,) = assistant["tool_calls"]
    assert call["id"] == "call_1" and call["type"] == "function"
    assert call["function"]["name"] == "find_contact"
    assert json.loads(call["function"]["arguments"]) == {"email": "ana@example.com"}
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": '{"id": 7}'}


async def test_openai_tool_call_round_trip(openai_api: ApiUnderTest, prices: PriceTable) -> None:
    final = openai_reply("Ana is contact 7.")
    final.check = _check_openai_tool_result
    openai_api.fake.script(
        openai_reply(
            None,
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "find_contact",
                        "arguments": '{"email": "ana@example.com"}',
                    },
                }
            ],
        ),
        final,
    )
    provider = openai_api.make(prices)
    conversation = [Message.user("Find ana@example.com")]

    first = await provider.complete(conversation, [FIND_CONTACT])

    assert first.stop_reason == "tool_calls"
    assert first.message.content == ""
    assert first.message.tool_calls == [
        ToolCall(id="call_1", name="find_contact", arguments={"email": "ana@example.com"})
    ]
    conversation += [first.message, Message.tool("call_1", '{"id": 7}')]
    second = await provider.complete(conversation, [FIND_CONTACT])
    assert second.message.content == "Ana is contact 7."
    assert len(openai_api.fake.received) == 2


async def test_openai_unparseable_tool_arguments_are_kept_raw(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    bad = '{"email": '
    openai_api.fake.script(
        openai_reply(
            None,
            tool_calls=[
                {"id": "c", "type": "function", "function": {"name": "x", "arguments": bad}}
            ],
        )
    )
    completion = await openai_api.make(prices).complete([Message.user("go")], [FIND_CONTACT])

    (call,) = completion.message.tool_calls
    assert call.arguments == {}
    assert call.raw_arguments == bad


def _check_anthropic_tool_result(body: dict[str, Any]) -> None:
    assert body["tools"] == [
        {
            "name": "find_contact",
            "description": "Finds a contact by email.",
            "input_schema": FIND_CONTACT.parameters,
        }
    ], body["tools"]
    user, assistant, results = body["messages"]
    assert user == {"role": "user", "content": [{"type": "text", "text": "Find ana@example.com"}]}
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Looking it up."},
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "find_contact",
                "input": {"email": "ana@example.com"},
            },
        ],
    }, assistant
    # Tool results go back as tool_result blocks in one user turn.
    assert results == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": '{"id": 7}'}],
    }, results


async def test_anthropic_tool_call_round_trip(
    anthropic_api: ApiUnderTest, prices: PriceTable
) -> None:
    final = anthropic_reply([{"type": "text", "text": "Ana is contact 7."}])
    final.check = _check_anthropic_tool_result
    anthropic_api.fake.script(
        anthropic_reply(
            [
                {"type": "text", "text": "Looking it up."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "find_contact",
                    "input": {"email": "ana@example.com"},
                },
            ],
            stop_reason="tool_use",
        ),
        final,
    )
    provider = anthropic_api.make(prices)
    conversation = [Message.user("Find ana@example.com")]

    first = await provider.complete(conversation, [FIND_CONTACT])

    assert first.stop_reason == "tool_calls"
    assert first.message.content == "Looking it up."
    assert first.message.tool_calls == [
        ToolCall(id="toolu_1", name="find_contact", arguments={"email": "ana@example.com"})
    ]
    conversation += [first.message, Message.tool("toolu_1", '{"id": 7}')]
    second = await provider.complete(conversation, [FIND_CONTACT])
    assert second.message.content == "Ana is contact 7."
    assert second.stop_reason == "end"


# (c)-(f) retries, for both APIs


async def test_429_with_retry_after_is_retried_once_after_the_wait(
    api: ApiUnderTest, prices: PriceTable
) -> None:
    api.fake.script(api.error(429, {"Retry-After": "1"}), api.ok("after the wait"))
    provider = api.make(prices, max_retries=3)

    completion = await provider.complete([Message.user("Hi")])

    assert completion.message.content == "after the wait"
    first, second = api.fake.received
    # The backoff base is 0.01 s, so only Retry-After explains a wait of about a second.
    assert second.at - first.at >= 0.95
    assert completion.latency_ms >= 950


async def test_5xx_twice_then_success(api: ApiUnderTest, prices: PriceTable) -> None:
    api.fake.script(api.error(500), api.error(503), api.ok("third time"))
    provider = api.make(prices, max_retries=3)

    completion = await provider.complete([Message.user("Hi")])

    assert completion.message.content == "third time"
    assert len(api.fake.received) == 3


async def test_400_is_not_retried(api: ApiUnderTest, prices: PriceTable) -> None:
    api.fake.script(api.error(400), api.ok())
    provider = api.make(prices, max_retries=3)

    with pytest.raises(LLMError) as raised:
        await provider.complete([Message.user("Hi")])

    assert raised.value.status == 400
    assert raised.value.code == "http_error"
    assert raised.value.provider == api.provider
    assert "fake error 400" in str(raised.value)
    assert len(api.fake.received) == 1


async def test_giving_up_after_max_retries(api: ApiUnderTest, prices: PriceTable) -> None:
    api.fake.script(*(api.error(503) for _ in range(3)), api.ok())
    provider = api.make(prices, max_retries=2)

    with pytest.raises(LLMError) as raised:
        await provider.complete([Message.user("Hi")])

    assert raised.value.code == "retries_exhausted"
    assert raised.value.status == 503
    assert raised.value.provider == api.provider
    assert raised.value.attempts == 3
    assert len(api.fake.received) == 3


async def test_a_slow_answer_times_out(api: ApiUnderTest, prices: PriceTable) -> None:
    slow = api.ok("too late")
    slow.delay_seconds = 2.0
    api.fake.script(slow)
    provider = api.make(prices, max_retries=0, timeout_seconds=0.3)

    with pytest.raises(LLMError) as raised:
        await provider.complete([Message.user("Hi")])

    assert raised.value.code == "retries_exhausted"
    assert isinstance(raised.value.__cause__, LLMError)
    assert raised.value.__cause__.code == "timeout"


async def test_connection_refused_is_a_connection_error(prices: PriceTable) -> None:
    from crmbench_clients.serving import free_port

    config = ProviderConfig(
        provider="openai",
        model="gpt-4.1",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        max_retries=1,
        backoff_base_seconds=0.01,
    )

    with pytest.raises(LLMError) as raised:
        await make_provider(config, prices).complete([Message.user("Hi")])

    assert raised.value.code == "retries_exhausted"
    assert raised.value.attempts == 2
    assert isinstance(raised.value.__cause__, LLMError)
    assert raised.value.__cause__.code == "connection_error"


# (g) keys only from the environment


@pytest.mark.parametrize(
    ("provider", "variable"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_missing_key_names_the_variable(
    provider: str, variable: str, prices: PriceTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(variable)
    config = ProviderConfig.model_validate({"provider": provider, "model": "m"})

    with pytest.raises(MissingApiKey) as raised:
        make_provider(config, prices)

    assert raised.value.env_var == variable
    assert variable in str(raised.value)
    assert raised.value.code == "missing_api_key"


async def test_key_variable_is_configurable(
    openai_api: ApiUnderTest, prices: PriceTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(MissingApiKey, match="VLLM_KEY"):
        openai_api.make(prices, api_key_env="VLLM_KEY")

    monkeypatch.setenv("VLLM_KEY", "local-secret")
    openai_api.fake.script(openai_api.ok())
    await openai_api.make(prices, api_key_env="VLLM_KEY").complete([Message.user("Hi")])
    assert openai_api.fake.received[0].headers["authorization"] == "Bearer local-secret"


def test_a_local_server_may_need_no_key(
    prices: PriceTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    config = ProviderConfig.model_validate(
        {"provider": "openai", "model": "llama", "api_key_env": None}
    )
    assert make_provider(config, prices).name == "openai"
