"""Reading a provider's JSON answer without trusting its shape: the body, objects, counts
and text, and the `bad_response` error for an answer that is not one (an outage)."""

from __future__ import annotations

from typing import Any, Protocol

from crmbench_llm.base import LLMError


class JsonResponse(Protocol):
    def json(self) -> Any: ...


def bad_response(provider: str, message: str) -> LLMError:
    """The server answered 200 with something that is not a completion (fault: outage)."""
    return LLMError(message, code="bad_response", provider=provider)


def json_body(provider: str, response: JsonResponse) -> dict[str, Any]:
    """The JSON object a 200 answer holds; `bad_response` when it is not JSON (or nested
    too deep for the parser) or not an object."""
    try:
        body = response.json()
    except (ValueError, RecursionError) as error:
        raise bad_response(provider, f"the answer is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise bad_response(provider, "the answer is not a JSON object")
    return body


def mapping(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else `{}`."""
    return value if isinstance(value, dict) else {}


def count(value: Any) -> int:
    """A token count: a positive integer, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def text_of(content: Any) -> str:
    """A reply's text: `content` as a string, or the text parts of a list of content parts
    (`[{"type": "text", "text": ...}]`, as some compatible servers send), joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type", "text") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""
