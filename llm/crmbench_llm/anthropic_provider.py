"""The Anthropic messages provider. The system prompt travels separately; tool calls and
results are content blocks; thinking blocks go back with the turn that made them. The SDK's
own retries are off so the shared retry loop applies; replies are read from the response's
JSON, checked here, as for OpenAI."""

from __future__ import annotations

import asyncio
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import anthropic

from crmbench_llm.base import call_with_retries, connection_failure, http_failure, notify_once
from crmbench_llm.config import PriceTable, ProviderConfig
from crmbench_llm.tool_calls import assistant_turn, make_tool_call, used_ids
from crmbench_llm.types import (
    Completion,
    Message,
    StopReason,
    ToolCall,
    ToolSpec,
    Usage,
)
from crmbench_llm.wire import bad_response, count, json_body, mapping, text_of

PROVIDER = "anthropic"

REASONING_BLOCKS = frozenset({"thinking", "redacted_thinking"})

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
    An assistant turn starts with its reasoning blocks, unchanged (the API requires them
    before the tool_use blocks they led to). Empty text is left out (the API refuses empty
    text blocks), and so is a turn left with no block at all.
    """
    system_parts = [system] if system else []
    wire: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "system":
            system_parts.append(message.content)
        elif message.role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            if message.content:
                result["content"] = message.content
            add("user", [result])
        elif message.role == "assistant":
            blocks: list[dict[str, Any]] = [dict(block) for block in message.reasoning]
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                for call in message.tool_calls
            )
            add("assistant", blocks)
        elif message.content:
            add("user", [{"type": "text", "text": message.content}])
    return ("\n\n".join(system_parts) or None), wire


def to_anthropic_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
        for tool in tools
    ]


def sdk_deprecations() -> dict[str, str]:
    """Models the installed SDK knows as deprecated, with their end-of-life dates."""
    try:
        from anthropic._data import DEPRECATED_MODELS
    except ImportError:  # an SDK release without the list
        return {}
    return dict(DEPRECATED_MODELS)


def announce_deprecation(model: str) -> None:
    """Tells the user once per process when `model` is deprecated, and stops the SDK from
    repeating it as a DeprecationWarning on every call (Python hides those by default)."""
    end_of_life = sdk_deprecations().get(model)
    if end_of_life is None:
        return
    notify_once(
        f"warning: the Anthropic model {model!r} is deprecated and reaches end of life on "
        f"{end_of_life}; set a current model in the run config (providers.<agent>.model)"
    )
    warnings.filterwarnings(
        "ignore",
        message=rf"The model '{re.escape(model)}' is deprecated",
        category=DeprecationWarning,
    )


class AnthropicProvider:
    """Messages through the official SDK's AsyncAnthropic."""

    name = PROVIDER

    def __init__(self, config: ProviderConfig, prices: PriceTable) -> None:
        self.config = config
        self.prices = prices
        announce_deprecation(config.model)
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
            # The SDK dropped its `temperature` argument (current models refuse one); the
            # API still takes it for the models that accept it.
            request["extra_body"] = {"temperature": self.config.temperature}
        if headers:
            request["extra_headers"] = dict(headers)
        started = time.perf_counter()
        body = await call_with_retries(
            lambda: self._attempt(request), self.config.retry_policy(), provider=PROVIDER
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return self._completion(body, latency_ms, messages)

    async def _attempt(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request; the response's JSON body (read as sent: the SDK's parsed model is
        built without validation, so a malformed answer is best caught here)."""
        try:
            async with asyncio.timeout(self.config.timeout_seconds):
                raw = await self.client.messages.with_raw_response.create(**request)
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
        return json_body(PROVIDER, raw.http_response)

    def _completion(
        self, body: dict[str, Any], latency_ms: float, conversation: Sequence[Message]
    ) -> Completion:
        content = body.get("content")
        if not isinstance(content, list):
            raise bad_response(PROVIDER, "the response has no list of content blocks")
        texts: list[str] = []
        tool_calls: list[ToolCall] = []
        reasoning: list[dict[str, Any]] = []
        taken = used_ids(conversation)
        turn = assistant_turn(conversation)
        for block in map(mapping, content):
            kind = block.get("type")
            if kind == "text":
                texts.append(text_of([block]))
            elif kind == "tool_use":
                tool_calls.append(
                    make_tool_call(
                        block.get("id"),
                        block.get("name"),
                        block.get("input"),
                        turn=turn,
                        index=len(tool_calls),
                        taken=taken,
                    )
                )
            elif kind in REASONING_BLOCKS:
                reasoning.append(block)
        raw = mapping(body.get("usage"))
        cached = count(raw.get("cache_read_input_tokens"))
        cache_writes = count(raw.get("cache_creation_input_tokens"))
        # Anthropic's input_tokens excludes cache reads and writes; ours counts all input.
        usage = Usage(
            input_tokens=count(raw.get("input_tokens")) + cached + cache_writes,
            output_tokens=count(raw.get("output_tokens")),
            cached_input_tokens=cached,
        )
        model = body.get("model") if isinstance(body.get("model"), str) else None
        model = model or self.config.model
        stop = body.get("stop_reason")
        return Completion(
            message=Message.assistant("".join(texts), tool_calls, reasoning),
            stop_reason="tool_calls"
            if tool_calls
            else _STOP_REASONS.get(stop if isinstance(stop, str) else "", "other"),
            usage=usage,
            latency_ms=latency_ms,
            cost_usd=self.prices.cost(usage, self.config.model, model),
            model=model,
            provider=PROVIDER,
        )
