"""Local fake HTTP servers that speak the OpenAI chat-completions and embeddings APIs and the
Anthropic messages API.

Each test scripts the answers (status, JSON body, headers, optional delay) in order, and
may attach a check of the request body; a failed check is answered with HTTP 418 and the
reason, so the test sees it. A `responder` answers whatever is not scripted, from the
request (the fake LLM judge of tests/verifier/fake_judge.py). Every request is recorded
with its headers and arrival time.

Both fakes validate every request as strictly as the real API does (tool results answer
every tool call, arguments go back as JSON strings, no empty text where it is refused,
Anthropic's alternation and thinking rules); a violation is recorded in `violations` and
answered with the API's 400, as the real one would. `quirks` makes the answers take the
shapes compatible servers send (llama.cpp, Ollama, vLLM, Anthropic's thinking models).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

RequestCheck = Callable[[dict[str, Any]], None]
JSON = "application/json"

OPENAI_QUIRKS = frozenset(
    {
        "arguments_as_object",  # function.arguments is a JSON object (llama.cpp, Ollama)
        "no_tool_call_ids",  # tool calls have no id and no type (Ollama)
        "empty_tool_call_ids",  # tool calls have id "" (some llama.cpp builds)
        "repeated_tool_call_ids",  # every call of every turn is "call_0"
        "null_empty_arguments",  # arguments "{}" are sent as null
        "stop_with_tool_calls",  # finish_reason "stop" although there are tool calls
    }
)
ANTHROPIC_QUIRKS = frozenset(
    {
        "thinking",  # every answer starts with a signed thinking block (thinking models)
    }
)

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TOOL_USE_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
SAMPLING_REFUSED = frozenset({"claude-sonnet-5", "claude-sonnet-5-5"})
"""Models whose API answers 400 to a non-default temperature."""


@dataclass
class ScriptedAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    check: RequestCheck | None = None
    raw: str | None = None
    """Sent verbatim instead of `body` (no quirks): what no JSON encoder writes."""


@dataclass
class ReceivedRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


Validator = Callable[["FakeApi", dict[str, Any]], list[str]]
Quirker = Callable[["FakeApi", dict[str, Any]], dict[str, Any]]
Responder = Callable[[dict[str, Any]], ScriptedAnswer]


@dataclass
class FakeApi:
    """The script and the record of one fake server."""

    answers: deque[ScriptedAnswer] = field(default_factory=deque)
    received: list[ReceivedRequest] = field(default_factory=list)
    quirks: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    """Every way a request broke the real API's rules, in order."""
    signatures: set[str] = field(default_factory=set)
    """Signatures of the thinking blocks this fake handed out."""
    validator: Validator | None = None
    quirker: Quirker | None = None
    responder: Responder | None = None
    """Answers a valid request when no scripted answer is left (it outlives `reset`)."""
    error_body: Callable[[str], dict[str, Any]] = lambda message: {"error": {"message": message}}

    def reset(self) -> None:
        self.answers.clear()
        self.received.clear()
        self.quirks.clear()
        self.violations.clear()
        self.signatures.clear()

    def script(self, *answers: ScriptedAnswer) -> None:
        self.answers.extend(answers)

    async def answer(self, request: Request, validator: Validator | None = None) -> Response:
        """Records the request, validates it (with `validator` when the route has its own
        rules, else the API's), then answers from the script or the responder."""
        body = await request.json()
        self.received.append(ReceivedRequest(body, dict(request.headers), time.monotonic()))
        check = validator or self.validator
        problems = check(self, body) if check is not None else []
        if problems:
            self.violations.extend(problems)
            return JSONResponse(self.error_body("; ".join(problems)), 400)
        if self.answers:
            answer = self.answers.popleft()
        elif self.responder is not None:
            answer = self.responder(body)
        else:
            return JSONResponse(self.error_body("the fake has no answer scripted"), 599)
        if answer.check is not None:
            try:
                answer.check(body)
            except AssertionError as failure:
                return JSONResponse(self.error_body(f"bad request shape: {failure}"), 418)
        if answer.delay_seconds:
            await asyncio.sleep(answer.delay_seconds)
        if answer.raw is not None:
            text = answer.raw
        else:
            reply = answer.body
            if answer.status == 200 and self.quirker is not None:
                reply = self.quirker(self, copy.deepcopy(reply))
            # NaN and Infinity are written as Python writes them, as lax servers do.
            text = json.dumps(reply)
        return Response(text, answer.status, headers=answer.headers, media_type=JSON)


def openai_app(api: FakeApi) -> FastAPI:
    api.validator = validate_openai_request
    api.quirker = openai_quirks
    api.error_body = lambda message: {
        "error": {"message": message, "type": "invalid_request_error", "code": None}
    }
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await api.answer(request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await api.answer(request, validate_openai_embeddings_request)

    return app


def anthropic_app(api: FakeApi) -> FastAPI:
    api.validator = validate_anthropic_request
    api.quirker = anthropic_quirks
    api.error_body = lambda message: {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": message},
    }
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await api.answer(request)

    return app


# ------------------------------------------------------------------ OpenAI rules and quirks


def validate_openai_request(api: FakeApi, body: dict[str, Any]) -> list[str]:
    """The problems the real chat-completions API would refuse `body` for."""
    problems: list[str] = []
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("'model' is required")
    for index, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            problems.append(f"tools[{index}] is not a function tool")
        elif not _TOOL_NAME.match(str(function.get("name", ""))):
            problems.append(f"tools[{index}].function.name {function.get('name')!r} is invalid")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*problems, "'messages' must be a non-empty array"]
    awaiting: list[str] = []  # tool_call_ids of the last assistant turn not yet answered
    answerable: set[str] = set()
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        if role != "tool" and awaiting:
            problems.append(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id'; not answered: {awaiting} (before {where})"
            )
            awaiting, answerable = [], set()
        content = message.get("content")
        if role in ("system", "developer", "user"):
            if not isinstance(content, str | list):
                problems.append(f"{where}.content must be a string")
        elif role == "assistant":
            calls = message.get("tool_calls")
            if calls is not None:
                ids = _check_openai_calls(calls, where, problems)
                awaiting, answerable = list(ids), set(ids)
            if content is None and not calls:
                problems.append(f"{where}.content is required when there are no tool_calls")
            elif content is not None and not isinstance(content, str | list):
                problems.append(f"{where}.content must be a string or null")
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in answerable:
                problems.append(
                    f"{where}: messages with role 'tool' must be a response to a preceding "
                    f"message with 'tool_calls' (tool_call_id {call_id!r})"
                )
            elif call_id in awaiting:
                awaiting.remove(call_id)
            if not isinstance(content, str | list):
                problems.append(f"{where}.content must be a string")
        else:
            problems.append(f"{where}.role {role!r} is invalid")
    if awaiting:
        problems.append(f"the last assistant message's tool calls {awaiting} were not answered")
    return problems


EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
MAX_EMBEDDING_INPUTS = 2048


def validate_openai_embeddings_request(api: FakeApi, body: dict[str, Any]) -> list[str]:
    """The problems the real embeddings API would refuse `body` for: unknown fields, no
    model, an input that is not a non-empty string or a non-empty array of at most 2048
    non-empty strings (token arrays are accepted), an unknown encoding format, a
    non-positive `dimensions`."""
    problems = [
        f"Unrecognized request argument supplied: {name}"
        for name in sorted(set(body) - EMBEDDING_FIELDS)
    ]
    if not isinstance(body.get("model"), str) or not body["model"]:
        problems.append("'model' is required")
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        problems.append("'input' must be a non-empty string or array")
    elif len(inputs) > MAX_EMBEDDING_INPUTS:
        problems.append(f"'input' has {len(inputs)} items; at most {MAX_EMBEDDING_INPUTS}")
    else:
        for index, item in enumerate(inputs):
            tokens = isinstance(item, list) and all(isinstance(t, int) for t in item)
            if not (isinstance(item, str) and item) and not (tokens and item):
                problems.append(f"'$.input[{index}]' is invalid: an empty or non-string input")
    if body.get("encoding_format", "float") not in ("float", "base64"):
        problems.append(f"'encoding_format' {body['encoding_format']!r} is not float or base64")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        problems.append(f"'dimensions' must be a positive integer, not {dimensions!r}")
    return problems


def _check_openai_calls(calls: Any, where: str, problems: list[str]) -> list[str]:
    if not isinstance(calls, list) or not calls:
        problems.append(f"{where}.tool_calls must be a non-empty array")
        return []
    ids: list[str] = []
    for position, call in enumerate(calls):
        at = f"{where}.tool_calls[{position}]"
        call_id = call.get("id") if isinstance(call, dict) else None
        if not isinstance(call_id, str) or not call_id:
            problems.append(f"{at}.id is required")
        elif call_id in ids:
            problems.append(f"{at}.id {call_id!r} is repeated")
        else:
            ids.append(call_id)
        if not isinstance(call, dict) or call.get("type") != "function":
            problems.append(f"{at}.type must be 'function'")
            continue
        function = call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            problems.append(f"{at}.function.name is required")
        elif not isinstance(function.get("arguments"), str):
            problems.append(
                f"Invalid type for '{at}.function.arguments': expected a string, but got "
                f"{type(function.get('arguments')).__name__} instead"
            )
    return ids


def openai_quirks(api: FakeApi, reply: dict[str, Any]) -> dict[str, Any]:
    for choice in reply.get("choices", []):
        calls = choice.get("message", {}).get("tool_calls") or []
        for call in calls:
            function = call["function"]
            if "null_empty_arguments" in api.quirks and function["arguments"] in ("{}", ""):
                function["arguments"] = None
            elif "arguments_as_object" in api.quirks:
                function["arguments"] = json.loads(function["arguments"] or "{}")
            if "no_tool_call_ids" in api.quirks:
                call.pop("id", None)
                call.pop("type", None)
            if "empty_tool_call_ids" in api.quirks:
                call["id"] = ""
            if "repeated_tool_call_ids" in api.quirks:
                call["id"] = "call_0"
        if calls and "stop_with_tool_calls" in api.quirks:
            choice["finish_reason"] = "stop"
    return reply


# --------------------------------------------------------------- Anthropic rules and quirks


def validate_anthropic_request(api: FakeApi, body: dict[str, Any]) -> list[str]:
    """The problems the real messages API would refuse `body` for."""
    problems: list[str] = []
    model = body.get("model")
    if not isinstance(model, str) or not model:
        problems.append("model: Field required")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        problems.append("max_tokens: Field required")
    if model in SAMPLING_REFUSED and body.get("temperature") not in (None, 1, 1.0):
        problems.append(f"temperature is not supported by {model}")
    system = body.get("system")
    if isinstance(system, list):
        for index, block in enumerate(system):
            if block.get("type") != "text" or not block.get("text"):
                problems.append(f"system.{index}: text content blocks must be non-empty")
    for index, tool in enumerate(body.get("tools") or []):
        if not _TOOL_NAME.match(str(tool.get("name", ""))):
            problems.append(f"tools.{index}.name {tool.get('name')!r} is invalid")
        if not isinstance(tool.get("input_schema"), dict):
            problems.append(f"tools.{index}.input_schema: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return [*problems, "messages: at least one message is required"]
    if messages[0].get("role") != "user":
        problems.append("messages: the first message must use the 'user' role")
    previous_role: str | None = None
    pending: list[str] = []  # tool_use ids of the previous assistant turn
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        role = message.get("role")
        if role not in ("user", "assistant"):
            problems.append(f"{where}.role: Input should be 'user' or 'assistant'")
            continue
        if role == previous_role:
            problems.append(f"{where}: roles must alternate between 'user' and 'assistant'")
        previous_role = role
        blocks = _blocks(message.get("content"), where, problems)
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        if pending:
            missing = [call_id for call_id in pending if call_id not in results]
            if role != "user" or missing:
                problems.append(
                    f"{where}: tool_use ids were found without tool_result blocks "
                    f"immediately after: {missing or pending}"
                )
            leading = 0
            while leading < len(blocks) and blocks[leading].get("type") == "tool_result":
                leading += 1
            if leading < len(results):
                problems.append(f"{where}: tool_result blocks must come first in the content")
        unexpected = [call_id for call_id in results if call_id not in pending]
        if unexpected:
            problems.append(
                f"{where}: unexpected tool_use_id found in tool_result blocks: {unexpected}"
            )
        pending = []
        for position, block in enumerate(blocks):
            at = f"{where}.content.{position}"
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str) or not block["text"]:
                    problems.append(f"{at}: text content blocks must be non-empty")
            elif kind == "tool_use":
                if role != "assistant":
                    problems.append(f"{at}: tool_use blocks are only allowed in assistant turns")
                if not _TOOL_USE_ID.match(str(block.get("id", ""))):
                    problems.append(f"{at}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
                if not isinstance(block.get("input"), dict):
                    problems.append(f"{at}.input: Input should be a valid dictionary")
                pending.append(str(block.get("id")))
            elif kind == "tool_result":
                if role != "user":
                    problems.append(f"{at}: tool_result blocks are only allowed in user turns")
            elif kind in ("thinking", "redacted_thinking"):
                if role != "assistant":
                    problems.append(f"{at}: thinking blocks are only allowed in assistant turns")
                signature = block.get("signature", block.get("data"))
                if signature not in api.signatures:
                    problems.append(f"{at}: Invalid `signature` in `thinking` block")
            else:
                problems.append(f"{at}.type {kind!r} is invalid")
    if pending:
        problems.append("the last assistant turn has tool_use blocks; the request must answer")
    if "thinking" in api.quirks:
        problems.extend(_thinking_turn_problems(messages))
    return problems


def _blocks(content: Any, where: str, problems: list[str]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        if not content:
            problems.append(f"{where}: all messages must have non-empty content")
        return [{"type": "text", "text": content or "-"}]
    if not isinstance(content, list) or not content:
        problems.append(f"{where}: all messages must have non-empty content")
        return []
    return [block if isinstance(block, dict) else {} for block in content]


def _thinking_turn_problems(messages: list[dict[str, Any]]) -> list[str]:
    """With thinking on, the assistant turn whose tool calls the last user turn answers
    must start with its thinking block."""
    last = messages[-1]
    if last.get("role") != "user" or len(messages) < 2:
        return []
    content = last.get("content")
    blocks = content if isinstance(content, list) else []
    if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
        return []
    turn = messages[-2].get("content")
    first = turn[0] if isinstance(turn, list) and turn else {}
    if isinstance(first, dict) and first.get("type") in ("thinking", "redacted_thinking"):
        return []
    return [
        f"messages.{len(messages) - 2}.content.0.type: Expected `thinking` or "
        "`redacted_thinking`, but found `tool_use`. When `thinking` is enabled, a final "
        "`assistant` message must start with a thinking block"
    ]


def anthropic_quirks(api: FakeApi, reply: dict[str, Any]) -> dict[str, Any]:
    if "thinking" in api.quirks:
        signature = secrets.token_urlsafe(16)
        api.signatures.add(signature)
        # Thinking is summarised away by default ("display": "omitted"): empty text.
        reply["content"] = [
            {"type": "thinking", "thinking": "", "signature": signature},
            *reply["content"],
        ]
    return reply


# ----------------------------------------------------------- answers in each API's format


def openai_reply(
    content: str | None = "",
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cached_tokens: int = 0,
    model: str = "gpt-4.1-2025-04-14",
) -> ScriptedAnswer:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return ScriptedAnswer(
        200,
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens},
            },
        },
    )


def openai_raw_reply(message: dict[str, Any] | str, finish_reason: str = "stop") -> ScriptedAnswer:
    """A 200 chat completion whose `choices[0].message` is `message` as given (a dict, or
    JSON text put in verbatim), for the shapes no quirk flag covers."""
    text = message if isinstance(message, str) else json.dumps(message)
    return ScriptedAnswer(
        200,
        {},
        raw=(
            '{"id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, '
            '"model": "gpt-4.1-2025-04-14", "choices": [{"index": 0, "message": '
            f'{text}, "finish_reason": "{finish_reason}"}}], "usage": '
            '{"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}'
        ),
    )


def openai_tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One tool call as the real API sends it (quirks reshape it on the way out)."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def openai_embeddings_reply(
    vectors: list[list[float]], *, model: str = "text-embedding-3-small", prompt_tokens: int = 8
) -> ScriptedAnswer:
    """A 200 embeddings answer holding `vectors` in order (as floats)."""
    return ScriptedAnswer(
        200,
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": vector}
                for index, vector in enumerate(vectors)
            ],
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        },
    )


def embeddings_responder(vector_of: Callable[[str, int], list[float]]) -> Responder:
    """Answers every embeddings request with `vector_of(text, dimensions)` per input, the
    size being the request's `dimensions` (16 when it has none), as JSON floats (what
    `encoding_format: "float"` asks for)."""

    def respond(body: dict[str, Any]) -> ScriptedAnswer:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        size = body.get("dimensions") or 16
        vectors = [vector_of(str(text), size) for text in inputs]
        return openai_embeddings_reply(vectors, model=body["model"])

    return respond


def openai_error(status: int, headers: dict[str, str] | None = None) -> ScriptedAnswer:
    return ScriptedAnswer(
        status,
        {"error": {"message": f"fake error {status}", "type": "fake_error", "code": None}},
        headers or {},
    )


def anthropic_reply(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read_input_tokens: int = 0,
    model: str = "claude-sonnet-5-5",
) -> ScriptedAnswer:
    return ScriptedAnswer(
        200,
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_read_input_tokens": cache_read_input_tokens,
                "cache_creation_input_tokens": 0,
            },
        },
    )


def anthropic_error(status: int, headers: dict[str, str] | None = None) -> ScriptedAnswer:
    return ScriptedAnswer(
        status,
        {"type": "error", "error": {"type": "fake_error", "message": f"fake error {status}"}},
        headers or {},
    )
