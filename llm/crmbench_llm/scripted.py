"""A deterministic stand-in for an LLM: canned replies, no network, every call recorded."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from crmbench_llm.base import LLMError
from crmbench_llm.types import Completion, Message, ToolSpec

PROVIDER = "scripted"

Reply = Completion | Message | str
"""A canned reply: a full Completion, an assistant Message, or just its text."""


@dataclass(frozen=True)
class ScriptedCall:
    """What the provider was asked, for assertions."""

    messages: list[Message]
    tools: list[ToolSpec]
    system: str | None
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedProvider:
    """Answers from rules first, then from a queue of replies in order.

    A rule is a predicate on the text of the last user message and the reply to give when
    it holds; rules stay in force. When no rule matches, the next queued reply is used;
    an empty queue raises LLMError `script_exhausted`.
    """

    name = PROVIDER

    def __init__(
        self,
        replies: Sequence[Reply] = (),
        *,
        rules: Sequence[tuple[Callable[[str], bool], Reply]] = (),
        model: str = "scripted",
    ) -> None:
        self.model = model
        self.replies: deque[Reply] = deque(replies)
        self.rules: list[tuple[Callable[[str], bool], Reply]] = list(rules)
        self.calls: list[ScriptedCall] = []

    def then(self, *replies: Reply) -> ScriptedProvider:
        """Queues replies after the ones already queued."""
        self.replies.extend(replies)
        return self

    def when(self, predicate: Callable[[str], bool], reply: Reply) -> ScriptedProvider:
        """Adds a rule: `reply` whenever `predicate(last user message)` holds."""
        self.rules.append((predicate, reply))
        return self

    async def aclose(self) -> None:
        """Nothing to close: no network."""

    async def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec] = (),
        *,
        system: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Completion:
        self.calls.append(ScriptedCall(list(messages), list(tools), system, dict(headers or {})))
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        for predicate, reply in self.rules:
            if predicate(last_user):
                return self._completion(reply)
        if not self.replies:
            raise LLMError(
                f"no scripted reply left for call {len(self.calls)}",
                code="script_exhausted",
                provider=PROVIDER,
            )
        return self._completion(self.replies.popleft())

    def _completion(self, reply: Reply) -> Completion:
        if isinstance(reply, Completion):
            return reply
        message = Message.assistant(reply) if isinstance(reply, str) else reply
        return Completion(
            message=message,
            stop_reason="tool_calls" if message.tool_calls else "end",
            cost_usd=0.0,
            model=self.model,
            provider=PROVIDER,
        )
