"""The simulated LLM served as an OpenAI-compatible chat-completions endpoint, so agents
reach it through the same SDK and client code as a real model.

The case and trial come from the runner's per-call headers (CASE_HEADER, TRIAL_HEADER).
Bad requests get a 400 in OpenAI's error shape, which the client reports as a
non-retryable `http_error`, never a 500 that it would retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import ClientDisconnect

from agent_runner.protocol import CASE_HEADER, TRIAL_HEADER
from agent_runner.simulated.config import SimulatedLLMConfig
from agent_runner.simulated.policy import SimulatedLLMError, SimulatedPolicy, SimulatedTurn
from crmbench_clients.serving import serving_in_thread
from crmbench_contracts.cases import Case

logger = logging.getLogger(__name__)

CREATED = 0
"""The `created` timestamp of every completion: fixed, so same request, same response."""

CLIENT_CLOSED_REQUEST = 499
"""The status logged when the client closed the connection before the answer (nginx's)."""


class ChatCompletionRequest(BaseModel):
    """The part of a chat-completions request the simulated LLM reads; the rest (token
    limits, temperature, ...) is accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


def openai_error(status: int, message: str, code: str) -> JSONResponse:
    """An error answer in OpenAI's shape, which its SDK turns into APIStatusError."""
    body = {
        "error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    }
    return JSONResponse(body, status_code=status)


def count_tokens(text: str, chars_per_token: float) -> int:
    """An approximate token count: deterministic and non-zero for any non-empty text."""
    return math.ceil(len(text) / chars_per_token)


def completion_body(
    turn: SimulatedTurn,
    request: ChatCompletionRequest,
    *,
    completion_id: str,
    chars_per_token: float,
) -> dict[str, Any]:
    """The chat-completion JSON answering `request` with `turn`."""
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if turn.tool_call is not None:
        arguments = json.dumps(turn.tool_call.arguments, ensure_ascii=False)
        message["tool_calls"] = [
            {
                "id": turn.tool_call.id,
                "type": "function",
                "function": {"name": turn.tool_call.name, "arguments": arguments},
            }
        ]
        completion_text = turn.tool_call.name + arguments
        finish_reason = "tool_calls"
    else:
        message["content"] = turn.content
        completion_text = turn.content
        finish_reason = "stop"
    prompt_text = json.dumps(request.messages, ensure_ascii=False, sort_keys=True)
    if request.tools:
        prompt_text += json.dumps(request.tools, ensure_ascii=False, sort_keys=True)
    prompt_tokens = count_tokens(prompt_text, chars_per_token)
    completion_tokens = count_tokens(completion_text, chars_per_token)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": CREATED,
        "model": request.model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def _completion_id(case_id: str, trial: int, messages: int) -> str:
    key = f"{case_id}\x1f{trial}\x1f{messages}".encode()
    return "chatcmpl-sim-" + hashlib.sha256(key).hexdigest()[:24]


def create_simulated_app(
    config: SimulatedLLMConfig,
    cases: Mapping[str, Case],
    *,
    write_tools: frozenset[str] | None = None,
) -> FastAPI:
    """The simulated LLM's HTTP app: `POST /v1/chat/completions` and `GET /v1/models`.
    `write_tools` as for SimulatedPolicy (None: from the committed OpenAPI document)."""
    policy = SimulatedPolicy(config, cases, write_tools)
    app = FastAPI(title="crm-bench simulated LLM", docs_url=None, redoc_url=None)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": config.model, "object": "model", "created": CREATED, "owned_by": "crmbench"}
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except ValueError:
            return openai_error(400, "the request body is not JSON", "invalid_json")
        except ClientDisconnect:
            # The caller went away mid-request (a run stopped by a signal): nobody reads
            # this answer, and it is not a server error worth a traceback.
            return JSONResponse({}, status_code=CLIENT_CLOSED_REQUEST)
        try:
            body = ChatCompletionRequest.model_validate(payload)
        except ValidationError as error:
            return openai_error(400, f"not a chat-completions request: {error}", "invalid_request")
        case_id = request.headers.get(CASE_HEADER, "").strip()
        if not case_id:
            return openai_error(
                400,
                f"the simulated LLM needs the {CASE_HEADER} header to know the case",
                "missing_case_header",
            )
        trial_text = request.headers.get(TRIAL_HEADER, "0").strip()
        try:
            trial = int(trial_text)
        except ValueError:
            return openai_error(
                400, f"{TRIAL_HEADER} must be an integer, got {trial_text!r}", "invalid_trial"
            )
        try:
            turn = policy.next_turn(case_id, trial, "", body.messages)
        except SimulatedLLMError as error:
            return openai_error(400, str(error), error.code)
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        logger.debug(
            "simulated_llm_turn",
            extra={
                "case_id": case_id,
                "trial": trial,
                "phase": turn.phase,
                "mistake": turn.decision.mistake,
                "guided": turn.decision.guided,
                "tool": turn.tool_call.name if turn.tool_call else None,
            },
        )
        completion_id = _completion_id(case_id, trial, len(body.messages))
        return JSONResponse(
            completion_body(
                turn, body, completion_id=completion_id, chars_per_token=config.chars_per_token
            )
        )

    return app


@contextmanager
def running_simulated_llm(
    config: SimulatedLLMConfig,
    cases: Mapping[str, Case],
    *,
    write_tools: frozenset[str] | None = None,
) -> Iterator[str]:
    """The simulated LLM on a free 127.0.0.1 port for the duration of the block; yields
    the base URL an OpenAI client takes (ending in /v1)."""
    app = create_simulated_app(config, cases, write_tools=write_tools)
    with serving_in_thread(app, "simulated LLM") as url:
        yield f"{url}/v1"
