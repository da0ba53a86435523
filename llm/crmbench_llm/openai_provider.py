"""The OpenAI chat-completions provider; any OpenAI-compatible base URL works (vLLM, Ollama,
llama.cpp's server). The SDK's own retries are off so the shared retry loop applies.

Replies are read from the response's JSON, not from the SDK's parsed model: the SDK builds
that model without validation, so the shapes compatible servers send (arguments as an
object, tool calls with no id or type) arrive as whatever the server sent, and are best
read, checked and normalised here, once (see `crmbench_llm.tool_calls`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import openai

from crmbench_llm.base import call_with_retries, connection_failure, http_failure
from crmbench_llm.config import PriceTable, ProviderConfig
from crmbench_llm.tool_calls import assistant_turn, make_tool_call, used_ids
from crmbench_llm.types import (
    Completion,
    Message,
    StopReason,
    ToolSpec,
    Usage,
)
from crmbench_llm.wire import bad_response, count, json_body, mapping, text_of

PROVIDER = "openai"

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "length": "max_tokens",
    "content_filter": "content_filter",
}


def to_openai_messages(messages: Sequence[Message], system: str | None) -> list[dict[str, Any]]:
    wire: list[dict[str, Any]] = []
    if system:
        wire.append({"role": "system", "content": system})
    for message in messages:
        if message.role == "tool":
            wire.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
        elif message.role == "assistant" and message.tool_calls:
            wire.append(
                {
                    "role": "assistant",
                    "content": message.content or None,
                    "tool_calls": [
                        {
                            "id": call.id,
                            "type": "function",
                            "function": {
                                "name": call.name,
                                "arguments": call.raw_arguments
                                if call.raw_arguments is not None
                                else json.dumps(call.arguments),
                            },
                        }
                        for call in message.tool_calls
                    ],
                }
            )
        else:
            wire.append({"role": message.role, "content": message.content})
    return wire


def to_openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        for tool in tools
    ]


class OpenAIProvider:
    """Chat completions through the official SDK's AsyncOpenAI."""

    name = PROVIDER

    def __init__(self, config: ProviderConfig, prices: PriceTable) -> None:
        self.config = config
        self.prices = prices
        self.client = openai.AsyncOpenAI(
            api_key=config.api_key(),
            base_url=config.base_url,
            timeout=config.timeout_seconds,
            max_retries=0,
        )

    async def aclose(self) -> None:
        """Closes the SDK client's connection pool."""
        await self.client.close()

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec] = (),
        *,
        system: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Completion:
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": to_openai_messages(messages, system),
            self.config.max_tokens_param: self.config.max_tokens,
        }
        if tools:
            request["tools"] = to_openai_tools(tools)
        if self.config.temperature is not None:
            request["temperature"] = self.config.temperature
        if headers:
            request["extra_headers"] = dict(headers)
        started = time.perf_counter()
        body = await call_with_retries(
            lambda: self._attempt(request), self.config.retry_policy(), provider=PROVIDER
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return self._completion(body, latency_ms, messages)

    async def _attempt(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request; the response's JSON body."""
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                raw = await self.client.chat.completions.with_raw_response.create(**request)
        except openai.APIStatusError as error:
            raise http_failure(
                PROVIDER, error.status_code, error.message, error.response.headers
            ) from error
        except openai.APITimeoutError as error:
            raise connection_failure(PROVIDER, str(error), timed_out=True) from error
        except TimeoutError as error:
            raise connection_failure(
                PROVIDER, f"no answer within {self.config.timeout_seconds}s", timed_out=True
            ) from error
        except openai.APIConnectionError as error:
            raise connection_failure(PROVIDER, str(error), timed_out=False) from error
        return json_body(PROVIDER, raw.http_response)

    def _completion(
        self, body: dict[str, Any], latency_ms: float, conversation: Sequence[Message]
    ) -> Completion:
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise bad_response(PROVIDER, "the response has no choices")
        choice = choices[0]
        message = mapping(choice.get("message"))
        taken = used_ids(conversation)
        turn = assistant_turn(conversation)
        raw_calls = message.get("tool_calls")
        if raw_calls is not None and not isinstance(raw_calls, list):
            kind = type(raw_calls).__name__
            raise bad_response(PROVIDER, f"message.tool_calls is a {kind}, not a list")
        tool_calls = []
        for index, call in enumerate(raw_calls or []):
            call = mapping(call)
            function = mapping(call.get("function"))
            if call.get("type", "function") != "function" or not function:
                continue  # a custom tool kind this harness never offers
            tool_calls.append(
                make_tool_call(
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments"),
                    turn=turn,
                    index=index,
                    taken=taken,
                )
            )
        raw_usage = mapping(body.get("usage"))
        details = mapping(raw_usage.get("prompt_tokens_details"))
        usage = Usage(
            input_tokens=count(raw_usage.get("prompt_tokens")),
            output_tokens=count(raw_usage.get("completion_tokens")),
            cached_input_tokens=count(details.get("cached_tokens")),
        )
        model = body.get("model") if isinstance(body.get("model"), str) else None
        model = model or self.config.model
        finish = choice.get("finish_reason")
        finish_reason = finish if isinstance(finish, str) else ""
        return Completion(
            message=Message.assistant(text_of(message.get("content")), tool_calls),
            # Some compatible servers report "stop" even when they return tool calls.
            stop_reason="tool_calls" if tool_calls else _STOP_REASONS.get(finish_reason, "other"),
            usage=usage,
            latency_ms=latency_ms,
            cost_usd=self.prices.cost(usage, self.config.model, model),
            model=model,
            provider=PROVIDER,
        )
