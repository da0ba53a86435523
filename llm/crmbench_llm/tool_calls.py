"""Tool calls in every shape the servers send them: arguments as a JSON string, a JSON
object, empty or null, and ids that are missing, empty or reused (llama.cpp, Ollama, vLLM).

A call always leaves here with a non-empty id that is unique in its conversation, so the
tool result answering it, and the assistant turn sent back, carry the same id.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from crmbench_llm.types import Message, ToolCall

_ID_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Ids every API accepts back (Anthropic allows only these characters in a tool_use id)."""


def tool_arguments(value: Any) -> tuple[dict[str, Any], str | None]:
    """`(arguments, raw)` of a call's arguments as a server sent them.

    A JSON object, or a string holding one, is the arguments. An empty string, null or a
    missing field is no arguments (`{}`). Anything else (text that is not JSON, a JSON
    array or number, NaN or Infinity anywhere, nesting too deep to parse) is kept in
    `raw`, as text, for the model to be told it was wrong.
    """
    if value is None:
        return {}, None
    if isinstance(value, dict):
        if _finite(value):
            return value, None
        return {}, _as_text(value)
    if isinstance(value, str):
        if not value.strip():
            return {}, None
        try:
            parsed = strict_json_loads(value)
        except (ValueError, RecursionError):
            return {}, value
        if isinstance(parsed, dict):
            return parsed, None
        return {}, value
    return {}, _as_text(value)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def strict_json_loads(text: str) -> Any:
    """`json.loads` as the JSON standard has it: NaN, Infinity and -Infinity (which
    Python accepts and no JSON API does) raise ValueError; too deep nesting raises
    RecursionError."""
    return json.loads(text, parse_constant=_refuse_constant)


def _finite(value: Any) -> bool:
    """Whether no float in `value` (walked without recursion) is NaN or infinite."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return False
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _as_text(value: Any) -> str:
    """Arguments that are not a JSON object, as text for the model to see."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # nested deeper than json can write
        return "<arguments nested too deeply to show>"


def generated_id(turn: int, index: int) -> str:
    """The id given to the `index`th call of assistant turn `turn` when the server gave it
    none (or one already used): stable, so a replayed conversation carries the same ids."""
    return f"call_t{turn}_{index}"


def used_ids(messages: Iterable[Message]) -> set[str]:
    """Ids of the tool calls already in a conversation."""
    return {call.id for message in messages for call in message.tool_calls}


def assistant_turn(messages: Sequence[Message]) -> int:
    """The number of the next assistant turn of a conversation (0 for the first)."""
    return sum(1 for message in messages if message.role == "assistant")


def make_tool_call(
    call_id: Any, name: Any, arguments: Any, *, turn: int, index: int, taken: set[str]
) -> ToolCall:
    """A ToolCall from the fields a server sent; adds its id to `taken`.

    An id that is missing, empty, not a string, unfit to send back to every API, or already
    used in the conversation is replaced by `generated_id(turn, index)`.
    """
    parsed, raw = tool_arguments(arguments)
    chosen = call_id if isinstance(call_id, str) and _ID_SAFE.match(call_id) else None
    if chosen is None or chosen in taken:
        chosen = generated_id(turn, index)
        suffix = 0
        while chosen in taken:  # a server id may look like a generated one
            suffix += 1
            chosen = f"{generated_id(turn, index)}_{suffix}"
    taken.add(chosen)
    return ToolCall(
        id=chosen,
        name=name if isinstance(name, str) else "",
        arguments=parsed,
        raw_arguments=raw,
    )
