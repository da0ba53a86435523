"""Provider-neutral chat types: what the agent runner sends to and gets back from any LLM."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Role = Literal["system", "user", "assistant", "tool"]
StopReason = Literal["end", "tool_calls", "max_tokens", "content_filter", "other"]


class ToolCall(BaseModel):
    """One tool invocation the model asked for."""

    id: str
    """The provider's id for the call; a tool result answers it by this id."""
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Parsed JSON arguments. Empty when the model's arguments were not a JSON object."""
    raw_arguments: str | None = None
    """The model's argument text, kept only when it could not be parsed into `arguments`."""


class Message(BaseModel):
    """One turn of a conversation."""

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Tool calls made in an assistant turn."""
    tool_call_id: str | None = None
    """For a `tool` message: the id of the call this is the result of."""
    reasoning: list[dict[str, Any]] = Field(default_factory=list)
    """Opaque reasoning blocks the provider returned with an assistant turn (Anthropic's
    `thinking`/`redacted_thinking`, signatures included). The same provider gets them back
    unchanged with the turn, as it requires when the turn called tools; others ignore them."""

    @classmethod
    def system(cls, content: str) -> Message:
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str) -> Message:
        return cls(role="user", content=content)

    @classmethod
    def assistant(
        cls,
        content: str = "",
        tool_calls: list[ToolCall] | None = None,
        reasoning: list[dict[str, Any]] | None = None,
    ) -> Message:
        return cls(
            role="assistant",
            content=content,
            tool_calls=tool_calls or [],
            reasoning=reasoning or [],
        )

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> Message:
        return cls(role="tool", content=content, tool_call_id=tool_call_id)


class ToolSpec(BaseModel):
    """A tool offered to the model."""

    name: str
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON schema of the arguments object."""


class Usage(BaseModel):
    """Token counts of one call.

    `input_tokens` counts every prompt token, cached or not; `cached_input_tokens` is the
    part of it served from the provider's prompt cache (billed at the cached rate).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0


class Completion(BaseModel):
    """The model's reply to one call, with what it cost."""

    message: Message
    stop_reason: StopReason
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float = 0.0
    """Wall time of the call, retries and their waits included."""
    cost_usd: float | None = None
    """From the price table; None when the model has no price there."""
    model: str
    """The model the provider reports having used."""
    provider: str
