"""Local fake HTTP servers that speak the OpenAI chat-completions and Anthropic messages APIs.

Each test scripts the answers (status, JSON body, headers, optional delay) in order, and
may attach a check of the request body; a failed check is answered with HTTP 418 and the
reason, so the test sees it. Every request is recorded with its headers and arrival time.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

RequestCheck = Callable[[dict[str, Any]], None]


@dataclass
class ScriptedAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0
    check: RequestCheck | None = None


@dataclass
class ReceivedRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class FakeApi:
    """The script and the record of one fake server."""

    answers: deque[ScriptedAnswer] = field(default_factory=deque)
    received: list[ReceivedRequest] = field(default_factory=list)

    def reset(self) -> None:
        self.answers.clear()
        self.received.clear()

    def script(self, *answers: ScriptedAnswer) -> None:
        self.answers.extend(answers)

    async def answer(self, request: Request) -> JSONResponse:
        body = await request.json()
        self.received.append(ReceivedRequest(body, dict(request.headers), time.monotonic()))
        if not self.answers:
            return JSONResponse({"error": {"message": "the fake has no answer scripted"}}, 599)
        answer = self.answers.popleft()
        if answer.check is not None:
            try:
                answer.check(body)
            except AssertionError as failure:
                return JSONResponse({"error": {"message": f"bad request shape: {failure}"}}, 418)
        if answer.delay_seconds:
            await asyncio.sleep(answer.delay_seconds)
        return JSONResponse(answer.body, answer.status, headers=answer.headers)


def openai_app(api: FakeApi) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        return await api.answer(request)

    return app


def anthropic_app(api: FakeApi) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/messages")
    async def messages(request: Request) -> JSONResponse:
        return await api.answer(request)

    return app


# Answers in each API's wire format.


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
    model: str = "claude-sonnet-4-5-20250929",
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
