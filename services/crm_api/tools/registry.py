"""The tool registry: one entry per agent tool, the single source of tool endpoints."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from crm_api.context import ToolContext


class ToolKind(StrEnum):
    READ = "read"
    WRITE = "write"


Handler = Callable[[ToolContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    """The tool name agents know; also the OpenAPI operationId."""
    kind: ToolKind
    description: str
    """Written for the LLM that calls the tool: what it does, its rules, an example."""
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    handler: Handler
    tag: str


TOOLS: dict[str, Tool] = {}


def tool(
    name: str,
    *,
    kind: ToolKind,
    request: type[BaseModel],
    response: type[BaseModel],
    tag: str,
) -> Callable[[Handler], Handler]:
    """Registers a handler as a tool; its docstring is the tool's description."""

    def register(handler: Handler) -> Handler:
        if name in TOOLS:
            raise ValueError(f"tool {name!r} registered twice")
        description = inspect.cleandoc(handler.__doc__ or "")
        if not description:
            raise ValueError(f"tool {name!r} needs a docstring written for the LLM")
        TOOLS[name] = Tool(name, kind, description, request, response, handler, tag)
        return handler

    return register
