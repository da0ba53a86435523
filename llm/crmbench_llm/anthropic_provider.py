"""The Anthropic messages provider. The system prompt travels separately; tool calls and
results are content blocks. The SDK's own retries are off so the shared retry loop applies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import anthropic

from crmbench_llm.base import call_with_retries, connection_failure, http_failure
from crmbench_llm.config import PriceTable, ProviderConfig
from crmbench_llm.types import (
    Completion,
    Message,
    StopReason,
    ToolCall,
    ToolSpec,
    Usage,
)

PROVIDER = "anthropic"

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end",
    "stop_sequence": "end",
    "tool_use": "tool_calls",
    "max_tokens": "max_tokens",
    "refusal": "content_filter",
}


def to_anthropic_messages(
    messages: Sequence[Message], system: str | None
) -> tuple[str | None, list[dict[str, Any]]]:
    """The system prompt and the messages in Anthropic's shape.

    System messages join the system prompt. Tool results become `tool_result` blocks in a
    user turn; consecutive turns of one role are merged, as the API requires alternation.
    """
    system_parts = [system] if system else []
    wire: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            system_parts.append(message.content)
        elif message.role == "tool":
            add(
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.tool_call_id,
                        "content": message.content,
                    }
                ],
            )
        elif message.role == "assistant":
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                for call in message.tool_calls
            )
            add("assistant", blocks)
        else:
            add("user", [{"type": "text", "text": message.content}])
    return ("\n\n".join(system_parts) or None), wire


def to_anthropic_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
        for tool in tools
    ]


class AnthropicProvider:
    """Messages through the official SDK's AsyncAnthropic."""

    name = PROVIDER

    def __init__(self, config: ProviderConfig, prices: PriceTable) -> None:
        self.config = config
        self.prices = prices
        self.client = anthropic.AsyncAnthropic(
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
        system_prompt, wire = to_anthropic_messages(messages, system)
        request: dict[str, Any] = {
            "model": self.config.model,
            "messages": wire,
            "max_tokens": self.config.max_tokens,
        }
        if system_prompt:
            request["system"] = system_prompt
        if tools:
            request["tools"] = to_anthropic_tools(tools)
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
                return await self.client.messages.create(**request)
        except anthropic.APIStatusError as error:
            raise http_failure(
                PROVIDER, error.status_code, error.message, error.response.headers
            ) from error
        except anthropic.APITimeoutError as error:
            raise connection_failure(PROVIDER, str(error), timed_out=True) from error
        except TimeoutError as error:
            raise connection_failure(
                PROVIDER, f"no answer within {self.config.timeout_seconds}s", timed_out=True
            ) from error
        except anthropic.APIConnectionError as error:
            raise connection_failure(PROVIDER, str(error), timed_out=False) from error

    def _completion(self, response: Any, latency_ms: float) -> Completion:
        texts: list[str] = []
        tool_calls: list[ToolCall] = []
        for block in response.content:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                arguments = block.input if isinstance(block.input, dict) else {}
                tool_calls.append(ToolCall(id=block.id, name=block.name, arguments=arguments))
        raw = response.usage
        cached = getattr(raw, "cache_read_input_tokens", None) or 0
        cache_writes = getattr(raw, "cache_creation_input_tokens", None) or 0
        # Anthropic's input_tokens excludes cache reads and writes; ours counts all input.
        usage = Usage(
            input_tokens=(raw.input_tokens or 0) + cached + cache_writes,
            output_tokens=raw.output_tokens or 0,
            cached_input_tokens=cached,
        )
        model = response.model or self.config.model
        return Completion(
            message=Message.assistant("".join(texts), tool_calls),
            stop_reason="tool_calls"
            if tool_calls
            else _STOP_REASONS.get(response.stop_reason or "", "other"),
            usage=usage,
            latency_ms=latency_ms,
            cost_usd=self.prices.cost(usage, self.config.model, model),
            model=model,
            provider=PROVIDER,
        )
