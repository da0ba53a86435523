"""The OpenAI chat-completions provider; any OpenAI-compatible base URL works (vLLM, Ollama,
llama.cpp's server). The SDK's own retries are off so the shared retry loop applies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import openai

from crmbench_llm.base import (
    LLMError,
    call_with_retries,
    connection_failure,
    http_failure,
)
from crmbench_llm.config import PriceTable, ProviderConfig
from crmbench_llm.types import (
    Completion,
    Message,
    StopReason,
    ToolCall,
    ToolSpec,
    Usage,
)

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
                                "arguments": call.raw_arguments or json.dumps(call.arguments),
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


def parse_tool_call(call_id: str, name: str, arguments: str) -> ToolCall:
    """A tool call; arguments that are not a JSON object are kept raw, never dropped."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        return ToolCall(id=call_id, name=name, arguments=parsed)
    return ToolCall(id=call_id, name=name, arguments={}, raw_arguments=arguments)


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
        response = await call_with_retries(
            lambda: self._attempt(request), self.config.retry_policy(), provider=PROVIDER
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return self._completion(response, latency_ms)

    async def _attempt(self, request: dict[str, Any]) -> Any:
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                return await self.client.chat.completions.create(**request)
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

    def _completion(self, response: Any, latency_ms: float) -> Completion:
        if not response.choices:
            raise LLMError("the response has no choices", code="bad_response", provider=PROVIDER)
        choice = response.choices[0]
        tool_calls = [
            parse_tool_call(call.id, call.function.name, call.function.arguments or "")
            for call in (choice.message.tool_calls or [])
            if getattr(call, "function", None) is not None
        ]
        usage = Usage()
        if response.usage is not None:
            details = response.usage.prompt_tokens_details
            usage = Usage(
                input_tokens=response.usage.prompt_tokens or 0,
                output_tokens=response.usage.completion_tokens or 0,
                cached_input_tokens=(details.cached_tokens or 0) if details else 0,
            )
        model = response.model or self.config.model
        return Completion(
            message=Message.assistant(choice.message.content or "", tool_calls),
            # Some compatible servers report "stop" even when they return tool calls.
            stop_reason="tool_calls"
            if tool_calls
            else _STOP_REASONS.get(choice.finish_reason or "", "other"),
            usage=usage,
            latency_ms=latency_ms,
            cost_usd=self.prices.cost(usage, self.config.model, model),
            model=model,
            provider=PROVIDER,
        )
