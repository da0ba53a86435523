"""Which CRM tools read and which write, as the CRM API's OpenAPI document declares them:
every tool operation carries `x-tool-kind`, so consumers need the document, not the API's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

ToolKindName = Literal["read", "write"]
"""A tool's kind: `write` tools change the CRM's state, `read` tools do not."""

TOOL_KIND_KEY: Final = "x-tool-kind"
"""The OpenAPI extension that carries a tool operation's kind."""

_KINDS: Final[frozenset[str]] = frozenset(get_args(ToolKindName))
_HTTP_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class InvalidToolKinds(ValueError):
    """The document's tool kinds cannot be read; `code` is machine-readable."""

    code = "invalid_tool_kinds"


def tool_kinds(openapi: Mapping[str, Any]) -> dict[str, ToolKindName]:
    """Tool name (the operation's `operationId`) -> kind, for every operation of the
    OpenAPI document `openapi` that carries `x-tool-kind`; sorted by name, empty when no
    operation does.

    Raises InvalidToolKinds when a kind is neither `read` nor `write`, when an operation
    with a kind has no operationId, or when two such operations share one.
    """
    paths = openapi.get("paths")
    if not isinstance(paths, Mapping):
        raise InvalidToolKinds("the OpenAPI document has no `paths` object")
    kinds: dict[str, ToolKindName] = {}
    for path, item in paths.items():
        if not isinstance(item, Mapping):
            continue
        for method in _HTTP_METHODS:
            operation = item.get(method)
            if not isinstance(operation, Mapping) or TOOL_KIND_KEY not in operation:
                continue
            where = f"{method.upper()} {path}"
            kind = operation[TOOL_KIND_KEY]
            if kind not in _KINDS:
                raise InvalidToolKinds(
                    f"{where}: {TOOL_KIND_KEY} is {kind!r}, not one of {sorted(_KINDS)}"
                )
            name = operation.get("operationId")
            if not isinstance(name, str) or not name:
                raise InvalidToolKinds(f"{where} has a {TOOL_KIND_KEY} but no operationId")
            if name in kinds:
                raise InvalidToolKinds(f"{where}: tool {name!r} is declared twice")
            kinds[name] = kind
    return dict(sorted(kinds.items()))


def write_tools(openapi: Mapping[str, Any]) -> frozenset[str]:
    """Names of the tools of `openapi` whose kind is `write` (see `tool_kinds`, whose
    errors it raises). Names alone do not tell: `quote_details` reads, `add_note` writes."""
    return frozenset(name for name, kind in tool_kinds(openapi).items() if kind == "write")
