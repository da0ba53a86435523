"""The OpenAI and Anthropic providers against local fake servers speaking each API."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from agent_runner.run.config import load_run_config
from crmbench_llm import (
    LLMError,
    Message,
    MissingApiKey,
    PriceTable,
    ProviderConfig,
    ToolCall,
    ToolSpec,
    base,
    make_provider,
)
from crmbench_llm.anthropic_provider import sdk_deprecations, to_anthropic_messages
from tests.agent_runner.conftest import ApiUnderTest
from tests.agent_runner.fake_llm_servers import (
    ANTHROPIC_QUIRKS,
    OPENAI_QUIRKS,
    FakeApi,
    ScriptedAnswer,
    anthropic_reply,
    openai_raw_reply,
    openai_reply,
    openai_tool_call,
    validate_anthropic_request,
    validate_openai_request,
)

DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
"""JSON nested deeper than Python's parser goes (it raises RecursionError)."""
ORIGINAL_PAIRING = Path(__file__).resolve().parents[2] / "config" / "run.original-pairing.yaml"

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
    assert completion.model == "claude-sonnet-5-5"
    # Anthropic's input_tokens excludes cache reads; ours counts all input.
    assert completion.usage.input_tokens == 1000
    assert completion.usage.output_tokens == 200
    assert completion.usage.cached_input_tokens == 400
    # 600 fresh input at $2, 400 cached at $0.10, 200 output at $10, per million.
    assert completion.cost_usd == pytest.approx(0.00324)
    (received,) = anthropic_api.fake.received
    # SDK releases differ in the header that carries the key.
    assert "sk-dummy-anthropic" in (
        received.headers.get("x-api-key", ""),
        received.headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert received.body["model"] == "claude-sonnet-5-5"
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


# Compatible servers' shapes of a tool call (llama.cpp, Ollama, vLLM), read one way


@pytest.mark.parametrize(
    ("sent", "arguments", "raw"),
    [
        ('{"email": "a@b.c"}', {"email": "a@b.c"}, None),
        ({"email": "a@b.c"}, {"email": "a@b.c"}, None),  # an object, not a string
        ("", {}, None),
        ("  ", {}, None),
        (None, {}, None),
        ('{"email": ', {}, '{"email": '),  # the model's broken JSON: kept for the model
        ("[1, 2]", {}, "[1, 2]"),
        (["a"], {}, '["a"]'),
        # Not JSON although Python's json reads it: the CRM API could never be sent it.
        ('{"email": NaN}', {}, '{"email": NaN}'),
        ('{"n": [1, -Infinity]}', {}, '{"n": [1, -Infinity]}'),
        ({"email": float("inf")}, {}, '{"email": Infinity}'),  # an object holding Infinity
        ({"a": {"b": [float("nan")]}}, {}, '{"a": {"b": [NaN]}}'),
        pytest.param(DEEP_ARRAY, {}, DEEP_ARRAY, id="nested-too-deep-to-parse"),
    ],
)
async def test_openai_tool_call_arguments_in_every_shape(
    openai_api: ApiUnderTest,
    prices: PriceTable,
    sent: Any,
    arguments: dict[str, Any],
    raw: str | None,
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "find_contact"}}
    call["function"]["arguments"] = sent
    openai_api.fake.script(openai_reply(None, tool_calls=[call]))

    completion = await openai_api.make(prices).complete([Message.user("go")], [FIND_CONTACT])

    assert completion.message.tool_calls == [
        ToolCall(id="call_1", name="find_contact", arguments=arguments, raw_arguments=raw)
    ]


async def test_openai_tool_calls_without_ids_get_stable_ids_per_turn(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    bare = [{"function": {"name": "find_contact", "arguments": {"email": e}}} for e in "ab"]
    openai_api.fake.script(
        openai_reply(None, tool_calls=bare), openai_reply(None, tool_calls=bare[:1])
    )
    provider = openai_api.make(prices)
    conversation = [Message.user("go")]

    first = await provider.complete(conversation, [FIND_CONTACT])
    conversation += [first.message, *(Message.tool(c.id, "{}") for c in first.message.tool_calls)]
    second = await provider.complete(conversation, [FIND_CONTACT])

    assert [c.id for c in first.message.tool_calls] == ["call_t0_0", "call_t0_1"]
    assert [c.id for c in second.message.tool_calls] == ["call_t1_0"]
    assert openai_api.fake.violations == []


@pytest.mark.parametrize("tool_calls", ["5", "true", '{"id": "call_1"}', '"call_1"'])
async def test_openai_tool_calls_that_are_not_a_list_are_a_bad_response(
    openai_api: ApiUnderTest, prices: PriceTable, tool_calls: str
) -> None:
    """The server's message is broken, not the model's call: an outage, never a crash."""
    openai_api.fake.script(
        openai_raw_reply(f'{{"role": "assistant", "content": null, "tool_calls": {tool_calls}}}')
    )

    with pytest.raises(LLMError) as raised:
        await openai_api.make(prices).complete([Message.user("go")], [FIND_CONTACT])

    assert raised.value.code == "bad_response" and raised.value.fault == "outage"


async def test_a_body_nested_too_deep_to_parse_is_a_bad_response(
    api: ApiUnderTest, prices: PriceTable
) -> None:
    api.fake.script(ScriptedAnswer(200, {}, raw='{"a": ' * 100_000 + "1" + "}" * 100_000))

    with pytest.raises(LLMError) as raised:
        await api.make(prices).complete([Message.user("go")])

    assert raised.value.code == "bad_response" and raised.value.fault == "outage"
    assert len(api.fake.received) == 1


async def test_openai_content_as_a_list_of_parts_is_its_text(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    parts = [
        {"type": "text", "text": "Ana is "},
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "text", "text": "contact 7."},
    ]
    openai_api.fake.script(openai_raw_reply({"role": "assistant", "content": parts}))

    completion = await openai_api.make(prices).complete([Message.user("go")])

    assert completion.message.content == "Ana is contact 7."
    assert completion.stop_reason == "end"


async def test_openai_non_finite_arguments_go_back_raw_without_a_protocol_violation(
    openai_api: ApiUnderTest, prices: PriceTable
) -> None:
    """A call whose arguments hold NaN is the model's malformed call: kept as its text,
    answered with a tool result, and sent back as the string it was."""
    openai_api.fake.quirks.add("arguments_as_object")
    call = openai_tool_call("call_1", "find_contact", {"email": float("nan")})
    openai_api.fake.script(openai_reply(None, tool_calls=[call]), openai_reply("done"))
    provider = openai_api.make(prices)

    first = await provider.complete([Message.user("go")], [FIND_CONTACT])
    (sent,) = first.message.tool_calls
    conversation = [Message.user("go"), first.message, Message.tool(sent.id, "malformed")]
    final = await provider.complete(conversation, [FIND_CONTACT])

    assert (sent.arguments, sent.raw_arguments) == ({}, '{"email": NaN}')
    assert final.message.content == "done" and openai_api.fake.violations == []
    returned = openai_api.fake.received[1].body["messages"][1]["tool_calls"][0]
    assert returned["function"]["arguments"] == '{"email": NaN}'


@pytest.mark.parametrize("content", ["null", '"hi"', "5", '{"type": "text", "text": "hi"}'])
async def test_anthropic_content_that_is_not_a_list_is_a_bad_response(
    anthropic_api: ApiUnderTest, prices: PriceTable, content: str
) -> None:
    reply = anthropic_reply([]).body
    raw = json.dumps(reply).replace('"content": []', f'"content": {content}')
    anthropic_api.fake.script(ScriptedAnswer(200, {}, raw=raw))

    with pytest.raises(LLMError) as raised:
        await anthropic_api.make(prices).complete([Message.user("go")])

    assert raised.value.code == "bad_response" and raised.value.fault == "outage"


async def test_anthropic_odd_blocks_usage_and_non_finite_input_are_read_not_crashed_on(
    anthropic_api: ApiUnderTest, prices: PriceTable
) -> None:
    blocks: list[Any] = [
        "stray text",
        {"text": "no type"},
        {"type": "text", "text": None},
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "toolu_1", "name": "find_contact", "input": {"n": math.inf}},
    ]
    answer = anthropic_reply(blocks, stop_reason="tool_use")
    answer.body["usage"] = None
    anthropic_api.fake.script(answer)

    completion = await anthropic_api.make(prices).complete([Message.user("go")], [FIND_CONTACT])

    assert completion.message.content == "Looking."
    assert completion.message.tool_calls == [
        ToolCall(id="toolu_1", name="find_contact", arguments={}, raw_arguments='{"n": Infinity}')
    ]
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (0, 0)


def _tool_call_reply(api: ApiUnderTest, turn: int) -> Any:
    calls = [
        openai_tool_call(f"call_{turn}_{n}", "find_contact", {"email": f"{n}@example.com"})
        for n in range(2)
    ]
    if api.provider == "openai":
        return openai_reply(None, tool_calls=calls)
    blocks = [
        {
            "type": "tool_use",
            "id": c["id"],
            "name": "find_contact",
            "input": json.loads(c["function"]["arguments"]),
        }
        for c in calls
    ]
    return anthropic_reply(blocks, stop_reason="tool_use")


@pytest.mark.parametrize("quirk", sorted(OPENAI_QUIRKS | ANTHROPIC_QUIRKS))
async def test_every_quirk_round_trips_without_a_protocol_violation(
    openai_api: ApiUnderTest, anthropic_api: ApiUnderTest, prices: PriceTable, quirk: str
) -> None:
    """Two tool-calling turns then an answer, through the real SDK, against a server that
    sends `quirk`; the strict fake finds nothing wrong with what goes back."""
    api = openai_api if quirk in OPENAI_QUIRKS else anthropic_api
    api.fake.quirks.add(quirk)
    api.fake.script(_tool_call_reply(api, 0), _tool_call_reply(api, 1), api.ok("done"))
    provider = api.make(prices)
    conversation = [Message.user("Find both")]

    for _ in range(2):
        completion = await provider.complete(conversation, [FIND_CONTACT])
        assert completion.stop_reason == "tool_calls"
        calls = completion.message.tool_calls
        assert [c.arguments for c in calls] == [
            {"email": "0@example.com"},
            {"email": "1@example.com"},
        ]
        conversation += [completion.message, *(Message.tool(c.id, '{"id": 7}') for c in calls)]
    final = await provider.complete(conversation, [FIND_CONTACT])

    assert final.message.content == "done"
    assert api.fake.violations == []
    ids = [c.id for m in conversation for c in m.tool_calls]
    assert len(ids) == len(set(ids)) == 4 and all(ids)


def test_the_strict_fakes_refuse_what_the_real_apis_refuse() -> None:
    """The validators are not vacuous: each rule catches its violation."""
    fake = FakeApi()
    call = openai_tool_call("c1", "find_contact", {})
    unanswered = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "user", "content": "and?"},
        ],
    }
    assert "responding to each 'tool_call_id'" in validate_openai_request(fake, unanswered)[0]
    object_arguments = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{**call, "function": {"name": "f", "arguments": {}}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        ],
    }
    assert "expected a string" in validate_openai_request(fake, object_arguments)[0]
    stray = {"model": "m", "messages": [{"role": "tool", "tool_call_id": "x", "content": ""}]}
    assert "must be a response" in validate_openai_request(fake, stray)[0]

    def anthropic(*messages: dict[str, Any], **fields: Any) -> list[str]:
        body = {"model": "claude-sonnet-5-5", "max_tokens": 10, "messages": list(messages)}
        return validate_anthropic_request(fake, {**body, **fields})

    user = {"role": "user", "content": [{"type": "text", "text": "hi"}]}
    use = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "{}"}
    assert anthropic(user, {"role": "assistant", "content": [{"type": "text", "text": ""}]})
    assert anthropic(user, user)  # no alternation
    assert anthropic(user, {"role": "assistant", "content": [use]}, user)  # unanswered
    late = {"role": "user", "content": [{"type": "text", "text": "x"}, result]}
    assert anthropic(user, {"role": "assistant", "content": [use]}, late)  # result not first
    assert anthropic(user, temperature=0)  # this model takes no temperature
    assert (
        anthropic(user, {"role": "assistant", "content": [use]}, {**user, "content": [result]})
        == []
    )
    fake.quirks.add("thinking")
    answered = {"role": "user", "content": [result]}
    assert (
        "must start with a thinking block"
        in anthropic(user, {"role": "assistant", "content": [use]}, answered)[0]
    )
    forged = {"type": "thinking", "thinking": "", "signature": "forged"}
    assert (
        "signature" in anthropic(user, {"role": "assistant", "content": [forged, use]}, answered)[0]
    )


def test_an_empty_assistant_turn_is_left_out_for_anthropic() -> None:
    _, wire = to_anthropic_messages(
        [Message.user("hi"), Message.assistant(""), Message.user("still there?")], None
    )
    assert wire == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "text", "text": "still there?"},
            ],
        }
    ]
    assert (
        validate_anthropic_request(FakeApi(), {"model": "m", "max_tokens": 1, "messages": wire})
        == []
    )


# Whose fault a failed call is: the run's setup (stop), an outage (retry), or the model's


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_auth_permission_and_missing_model_are_setup_faults_not_retried(
    api: ApiUnderTest, prices: PriceTable, status: int
) -> None:
    api.fake.script(api.error(status), api.ok())
    provider = api.make(prices, max_retries=3)

    with pytest.raises(LLMError) as raised:
        await provider.complete([Message.user("Hi")])

    assert raised.value.fault == "setup" and raised.value.status == status
    assert len(api.fake.received) == 1


async def test_exhausted_retries_are_an_outage_and_a_400_is_the_models(
    api: ApiUnderTest, prices: PriceTable
) -> None:
    api.fake.script(api.error(503), api.error(400))
    provider = api.make(prices, max_retries=0)

    with pytest.raises(LLMError) as outage:
        await provider.complete([Message.user("Hi")])
    with pytest.raises(LLMError) as refused:
        await provider.complete([Message.user("Hi")])

    assert outage.value.fault == "outage" and outage.value.status == 503
    assert refused.value.fault == "model"


async def test_retry_log_lines_name_the_provider_status_and_wait(
    api: ApiUnderTest, prices: PriceTable, caplog: pytest.LogCaptureFixture
) -> None:
    api.fake.script(api.error(503), api.ok())
    caplog.set_level(logging.WARNING, logger="crmbench_llm.base")

    await api.make(prices, max_retries=1).complete([Message.user("Hi")])

    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("llm_retry")]
    assert api.provider in line and "503" in line and "retry 1 of 1 in 0.0" in line


# A provider's deprecation notice: said once, not per call, not hidden


async def test_a_deprecated_model_is_announced_once_and_the_sdk_does_not_repeat_it(
    anthropic_api: ApiUnderTest,
    prices: PriceTable,
    caplog: pytest.LogCaptureFixture,
    recwarn: pytest.WarningsRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "_NOTICES_SHOWN", set())
    caplog.set_level(logging.WARNING, logger="crmbench_llm.base")
    anthropic_api.fake.script(*(anthropic_api.ok() for _ in range(4)))

    for _ in range(2):  # the CLI builds the agent twice: to check it, then to run
        provider = anthropic_api.make(prices, model="claude-sonnet-4-5")
        for _ in range(2):
            await provider.complete([Message.user("Hi")])

    notices = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(notices) == 1
    assert "claude-sonnet-4-5" in notices[0] and "November 30th, 2026" in notices[0]
    assert [w for w in recwarn if "deprecated" in str(w.message)] == []


def test_the_default_teacher_is_a_current_model_the_sdk_does_not_deprecate(
    prices: PriceTable,
) -> None:
    default = load_run_config().providers["teacher"]
    original = load_run_config(ORIGINAL_PAIRING).providers
    assert default.model not in sdk_deprecations() and prices.price(default.model)
    assert default.temperature is None  # current Sonnets refuse a temperature
    assert (original["student"].model, original["teacher"].model) == (
        "gpt-4.1",
        "claude-sonnet-4-5",
    )
    assert original["teacher"].model in sdk_deprecations()


async def test_a_configured_temperature_reaches_anthropic_although_the_sdk_dropped_it(
    anthropic_api: ApiUnderTest, prices: PriceTable
) -> None:
    anthropic_api.fake.script(anthropic_api.ok(), anthropic_api.ok())

    await anthropic_api.make(prices, model="claude-sonnet-4-5", temperature=0).complete(
        [Message.user("Hi")]
    )
    await anthropic_api.make(prices).complete([Message.user("Hi")])

    first, second = anthropic_api.fake.received
    assert first.body["temperature"] == 0
    assert "temperature" not in second.body  # the default teacher takes none
    assert anthropic_api.fake.violations == []
