"""Agent tool definitions (OpenAI and Anthropic dialects) generated from the OpenAPI document.

The OpenAPI document is the one source of truth: each `POST /tools/{name}` operation
becomes one tool whose parameters are its request body schema with every `$ref` inlined.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

AgentToolFormat = Literal["openai", "anthropic"]

TOOL_PATH_PREFIX = "/tools/"
_DROPPED_KEYS = frozenset({"title"})


def _resolve(node: Any, components: dict[str, Any], stack: tuple[str, ...] = ()) -> Any:
    """Inlines local $refs and drops titles; refuses reference cycles (tools have none)."""
    if isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            name = ref.rsplit("/", 1)[-1]
            if not ref.startswith("#/components/schemas/") or name not in components:
                raise ValueError(f"unresolvable reference {ref!r}")
            if name in stack:
                raise ValueError(f"recursive schema {name!r} cannot be inlined")
            resolved = _resolve(components[name], components, (*stack, name))
            extras = {k: v for k, v in node.items() if k != "$ref" and k not in _DROPPED_KEYS}
            return {**resolved, **_resolve(extras, components, stack)}
        return {
            key: _resolve(value, components, stack)
            for key, value in node.items()
            if key not in _DROPPED_KEYS
        }
    if isinstance(node, list):
        return [_resolve(item, components, stack) for item in node]
    return node


def tool_operations(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(tool name, parameters JSON schema, description) for every tool operation, by name."""
    components = openapi.get("components", {}).get("schemas", {})
    found = []
    for path, item in openapi.get("paths", {}).items():
        if not path.startswith(TOOL_PATH_PREFIX) or "post" not in item:
            continue
        operation = item["post"]
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        schema = _resolve(copy.deepcopy(body.get("schema", {})), components)
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        found.append(
            (
                operation["operationId"],
                {"description": operation.get("description", ""), "parameters": schema},
            )
        )
    return sorted(found)


def agent_tools(openapi: dict[str, Any], fmt: AgentToolFormat) -> list[dict[str, Any]]:
    """Tool definitions in the given dialect, sorted by name."""
    tools = []
    for name, spec in tool_operations(openapi):
        if fmt == "openai":
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": spec["description"],
                        "parameters": spec["parameters"],
                    },
                }
            )
        elif fmt == "anthropic":
            tools.append(
                {
                    "name": name,
                    "description": spec["description"],
                    "input_schema": spec["parameters"],
                }
            )
        else:
            raise ValueError(f"unknown tool format {fmt!r}")
    return tools
