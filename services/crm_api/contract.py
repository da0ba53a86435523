"""Diff two OpenAPI documents and classify each contract change as breaking or not.

CI compares the served document with the committed docs/openapi.json through these pure functions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice, product
from typing import Any, Final, Literal
from urllib.parse import unquote

__all__ = ["ContractChange", "breaking_changes", "diff_openapi", "render_report"]

_HTTP_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# `integer` is not listed: `number` covers it.
_ANY_TYPE: Final = frozenset({"array", "boolean", "null", "number", "object", "string"})
_ANNOTATIONS: Final = frozenset(
    {
        "title",
        "description",
        "default",
        "example",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$comment",
        "externalDocs",
        "xml",
        "discriminator",
    }
)
_LENGTH_BOUNDS: Final = (
    ("maxLength", True),
    ("minLength", False),
    ("maxItems", True),
    ("minItems", False),
    ("maxProperties", True),
    ("minProperties", False),
)
_MAX_DEPTH: Final = 64
_MAX_ALTERNATIVES: Final = 64
_JSON_MEDIA: Final = "application/json"
_SUCCESS_STATUS: Final = re.compile(r"2(?:\d\d|XX)", re.IGNORECASE)
_PLAIN_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

_Side = Literal["request", "response"]
_Direction = Literal["narrowed", "widened"]
_Bound = tuple[float, bool]  # (limit, exclusive)


@dataclass(frozen=True)
class ContractChange:
    """One difference between two documents; `breaking` means an old client may now fail."""

    kind: str
    location: str
    detail: str
    breaking: bool

    def __str__(self) -> str:
        prefix = "BREAKING" if self.breaking else "non-breaking"
        text = f"{prefix} {self.kind}: {self.location}"
        return f"{text} ({self.detail})" if self.detail else text


def diff_openapi(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ContractChange]:
    """Every contract change from `old` to `new`, sorted by location then kind."""
    out: set[ContractChange] = set()
    old_ops, new_ops = _operations(old), _operations(new)
    for key in old_ops.keys() | new_ops.keys():
        path, method = key
        label = f"{method.upper()} {path}"
        old_op, new_op = old_ops.get(key), new_ops.get(key)
        if new_op is None:
            old_id = _operation_id(old_ops[key].operation)
            detail = f"operationId {old_id}" if old_id else "operation removed"
            out.add(ContractChange("removed-operation", label, detail, True))
        elif old_op is None:
            new_id = _operation_id(new_op.operation)
            detail = f"operationId {new_id}" if new_id else "operation added"
            out.add(ContractChange("added-operation", label, detail, False))
        else:
            _diff_operation(old, new, old_op, new_op, label, out)
    return sorted(out, key=lambda c: (c.location, c.kind, c.detail, c.breaking))


def breaking_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[ContractChange]:
    """The breaking subset of `diff_openapi(old, new)`, in the same order."""
    return [change for change in diff_openapi(old, new) if change.breaking]


def render_report(changes: Sequence[ContractChange]) -> str:
    """A multi-line report: a count line, then breaking changes, then the others."""
    breaking = [c for c in changes if c.breaking]
    other = [c for c in changes if not c.breaking]
    lines = [f"{_plural(len(breaking), 'breaking change')}, {_plural(len(other), 'other change')}"]
    lines.extend(str(c) for c in breaking)
    lines.extend(str(c) for c in other)
    return "\n".join(lines)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# --- document navigation ---------------------------------------------------------------------


def _as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _resolve_pointer(doc: Mapping[str, Any], ref: str) -> Any:
    """The node a local `#/...` reference points at, or None."""
    if ref == "#":
        return doc
    if not ref.startswith("#/"):
        return None
    node: Any = doc
    for raw in ref[2:].split("/"):
        token = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node


def _deref(doc: Mapping[str, Any], node: Any) -> tuple[Mapping[str, Any], str | None]:
    """Follow a chain of `$ref`s (keywords next to a `$ref` override its target's).

    Returns the target and the last reference followed. A reference that cannot be resolved
    (external, dangling, or a `$ref` chain that loops) yields an opaque schema naming it.
    """
    current = _as_map(node)
    last: str | None = None
    seen: set[str] = set()
    siblings: dict[str, Any] = {}
    while isinstance(current.get("$ref"), str):
        ref: str = current["$ref"]
        for key, value in current.items():
            if key != "$ref":
                siblings.setdefault(key, value)
        target = None if ref in seen else _resolve_pointer(doc, ref)
        seen.add(ref)
        last = ref
        if not isinstance(target, Mapping):
            return {**siblings, "x-unresolved-ref": ref}, last
        current = target
    if siblings:
        return {**current, **siblings}, last
    return current, last


@dataclass(frozen=True)
class _Operation:
    operation: Mapping[str, Any]
    parameters: Mapping[tuple[str, str], Mapping[str, Any]]


def _operation_id(operation: Mapping[str, Any]) -> str | None:
    value = operation.get("operationId")
    return value if isinstance(value, str) and value else None


def _parameter_map(
    doc: Mapping[str, Any], *lists: Iterable[Any]
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """Parameters keyed by (location, name); later lists override earlier ones."""
    params: dict[tuple[str, str], Mapping[str, Any]] = {}
    for items in lists:
        for item in items:
            param, _ = _deref(doc, item)
            where, name = param.get("in"), param.get("name")
            if isinstance(where, str) and isinstance(name, str):
                params[(where, name.lower() if where == "header" else name)] = param
    return params


def _operations(doc: Mapping[str, Any]) -> dict[tuple[str, str], _Operation]:
    ops: dict[tuple[str, str], _Operation] = {}
    for path, raw_item in _as_map(doc.get("paths")).items():
        item, _ = _deref(doc, raw_item)
        shared = _as_list(item.get("parameters"))
        for method in _HTTP_METHODS:
            if not isinstance(item.get(method), Mapping):
                continue
            operation = item[method]
            params = _parameter_map(doc, shared, _as_list(operation.get("parameters")))
            ops[(str(path), method)] = _Operation(operation, params)
    return ops


def _diff_operation(
    old_doc: Mapping[str, Any],
    new_doc: Mapping[str, Any],
    old: _Operation,
    new: _Operation,
    label: str,
    out: set[ContractChange],
) -> None:
    old_id, new_id = _operation_id(old.operation), _operation_id(new.operation)
    if old_id is not None and old_id != new_id:
        detail = f"operationId {old_id} renamed to {new_id}" if new_id else f"operationId {old_id}"
        out.add(ContractChange("removed-operation", label, detail, True))
    elif new_id is not None and old_id is None:
        out.add(ContractChange("added-operation-id", label, f"operationId {new_id}", False))

    _diff_parameters(old_doc, new_doc, old, new, label, out)
    _diff_request_body(old_doc, new_doc, old.operation, new.operation, label, out)
    _diff_responses(old_doc, new_doc, old.operation, new.operation, label, out)


def _parameter_schema(param: Mapping[str, Any]) -> Any:
    if "schema" in param:
        return param["schema"]
    content = _as_map(param.get("content"))
    return _as_map(content[min(content)]).get("schema", {}) if content else {}


def _diff_parameters(
    old_doc: Mapping[str, Any],
    new_doc: Mapping[str, Any],
    old: _Operation,
    new: _Operation,
    label: str,
    out: set[ContractChange],
) -> None:
    for key in old.parameters.keys() | new.parameters.keys():
        where = key[0]
        old_param, new_param = old.parameters.get(key), new.parameters.get(key)
        shown = (new_param or old_param or {}).get("name", key[1])
        location = f"{label} {where} parameter {shown}"
        if new_param is None:
            out.add(ContractChange("removed-parameter", location, "parameter removed", True))
            continue
        new_required = where == "path" or new_param.get("required") is True
        if old_param is None:
            if new_required:
                out.add(ContractChange("new-required-parameter", location, "new parameter", True))
            else:
                out.add(
                    ContractChange("added-parameter", location, "new optional parameter", False)
                )
            continue
        old_required = where == "path" or old_param.get("required") is True
        if new_required and not old_required:
            out.add(
                ContractChange(
                    "new-required-parameter", location, "parameter became required", True
                )
            )
        elif old_required and not new_required:
            out.add(ContractChange("widened-type", location, "parameter no longer required", False))
        walk = _SchemaWalk(old_doc, new_doc, location, "request", out)
        walk.compare(_parameter_schema(old_param), _parameter_schema(new_param), "", 0)


def _media_location(base: str, media: str) -> str:
    return base if media == _JSON_MEDIA else f"{base} {media}"


def _diff_content(
    old_doc: Mapping[str, Any],
    new_doc: Mapping[str, Any],
    old_content: Mapping[str, Any],
    new_content: Mapping[str, Any],
    base: str,
    side: _Side,
    out: set[ContractChange],
) -> None:
    for media in old_content.keys() | new_content.keys():
        if media not in new_content:
            verb = "accepted" if side == "request" else "returned"
            detail = f"{media} no longer {verb}"
            out.add(ContractChange("removed-content-type", base, detail, True))
        elif media not in old_content:
            out.add(ContractChange("added-content-type", base, f"{media} added", False))
        else:
            walk = _SchemaWalk(old_doc, new_doc, _media_location(base, media), side, out)
            old_schema = _as_map(old_content[media]).get("schema", {})
            new_schema = _as_map(new_content[media]).get("schema", {})
            walk.compare(old_schema, new_schema, "", 0)


def _diff_request_body(
    old_doc: Mapping[str, Any],
    new_doc: Mapping[str, Any],
    old_op: Mapping[str, Any],
    new_op: Mapping[str, Any],
    label: str,
    out: set[ContractChange],
) -> None:
    old_body, _ = _deref(old_doc, old_op.get("requestBody"))
    new_body, _ = _deref(new_doc, new_op.get("requestBody"))
    base = f"{label} request body"
    if new_body.get("required") is True and old_body.get("required") is not True:
        out.add(
            ContractChange("new-required-request-body", base, "request body now required", True)
        )
    old_content = _as_map(old_body.get("content"))
    new_content = _as_map(new_body.get("content"))
    _diff_content(old_doc, new_doc, old_content, new_content, base, "request", out)


def _success_responses(doc: Mapping[str, Any], operation: Mapping[str, Any]) -> dict[str, Any]:
    responses = _as_map(operation.get("responses"))
    return {
        str(status): _deref(doc, response)[0]
        for status, response in responses.items()
        if _SUCCESS_STATUS.fullmatch(str(status))
    }


def _diff_responses(
    old_doc: Mapping[str, Any],
    new_doc: Mapping[str, Any],
    old_op: Mapping[str, Any],
    new_op: Mapping[str, Any],
    label: str,
    out: set[ContractChange],
) -> None:
    old_responses = _success_responses(old_doc, old_op)
    new_responses = _success_responses(new_doc, new_op)
    for status in old_responses.keys() | new_responses.keys():
        base = f"{label} response {status}"
        if status not in new_responses:
            out.add(ContractChange("removed-response-status", base, f"{status} removed", True))
        elif status not in old_responses:
            out.add(ContractChange("added-response-status", base, f"{status} added", False))
        else:
            old_content = _as_map(old_responses[status].get("content"))
            new_content = _as_map(new_responses[status].get("content"))
            _diff_content(old_doc, new_doc, old_content, new_content, base, "response", out)


# --- schema normalisation --------------------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return "string"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _enum_values(schema: Mapping[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    return None


def _covered(kind: str, types: frozenset[str]) -> bool:
    return kind in types or (kind == "integer" and "number" in types)


def _schema_types(schema: Mapping[str, Any]) -> frozenset[str]:
    raw = schema.get("type")
    types: set[str]
    if isinstance(raw, str):
        types = {raw}
    elif isinstance(raw, list) and raw:
        types = {item for item in raw if isinstance(item, str)}
    elif (values := _enum_values(schema)) is not None:
        types = {_json_type(value) for value in values}
    elif any(k in schema for k in ("properties", "additionalProperties", "required")):
        types = {"object"}
    elif "items" in schema or "prefixItems" in schema:
        types = {"array"}
    else:
        types = set(_ANY_TYPE)
    if schema.get("nullable") is True:
        types.add("null")
    return frozenset(types)


def _intersect_types(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    return frozenset({t for t in a if _covered(t, b)} | {t for t in b if _covered(t, a)})


def _merge(schemas: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine `allOf` members: properties and required are united, types intersected."""
    merged: dict[str, Any] = {}
    for schema in schemas:
        if "type" in schema or "nullable" in schema:
            own = _schema_types({k: schema[k] for k in ("type", "nullable") if k in schema})
            if "type" in merged:
                own = _intersect_types(_schema_types({"type": merged["type"]}), own)
            merged["type"] = sorted(own)
        for key, value in schema.items():
            if key in ("type", "nullable"):
                continue
            if key == "properties" and isinstance(value, Mapping):
                props = dict(_as_map(merged.get("properties")))
                for name, sub in value.items():
                    props[name] = {"allOf": [props[name], sub]} if name in props else sub
                merged["properties"] = props
            elif key == "required" and isinstance(value, list):
                required = list(_as_list(merged.get("required")))
                required.extend(v for v in value if v not in required)
                merged["required"] = required
            else:
                merged[key] = value
    return merged


@dataclass(eq=False)
class _Alternative:
    """One non-composite schema among the alternatives of an `anyOf`/`oneOf`."""

    schema: Mapping[str, Any]
    ref: str | None
    types: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.types = _schema_types(self.schema)

    @property
    def value_types(self) -> frozenset[str]:
        return self.types - {"null"}

    def types_label(self) -> str:
        return "|".join(sorted(self.value_types))

    def label(self) -> str:
        if self.ref is None:
            return self.types_label()
        return unquote(self.ref.rsplit("/", 1)[-1]).replace("~1", "/").replace("~0", "~")

    def key(self) -> tuple[str, int]:
        return (self.ref, 0) if self.ref is not None else ("", id(self.schema))


def _flatten(doc: Mapping[str, Any], node: Any, trail: frozenset[str]) -> list[_Alternative]:
    """The alternatives a schema allows, with `$ref`s resolved and `allOf` merged."""
    schema, ref = _deref(doc, node)
    if ref is not None:
        if ref in trail:
            return []
        trail = trail | {ref}
    return _expand(doc, schema, ref, trail)


def _expand(
    doc: Mapping[str, Any], schema: Mapping[str, Any], ref: str | None, trail: frozenset[str]
) -> list[_Alternative]:
    if isinstance(schema.get("allOf"), list):
        base = {k: v for k, v in schema.items() if k != "allOf"}
        choices = [
            _flatten(doc, member, trail) or [_Alternative({}, None)] for member in schema["allOf"]
        ]
        result: list[_Alternative] = []
        for combo in islice(product(*choices), _MAX_ALTERNATIVES):
            merged = _merge([base, *(alt.schema for alt in combo)])
            inner = ref if ref is not None else next((a.ref for a in combo if a.ref), None)
            result.extend(_expand(doc, merged, inner, trail))
        return result
    branches = _as_list(schema.get("anyOf")) + _as_list(schema.get("oneOf"))
    if branches:
        base = {
            k: v for k, v in schema.items() if k not in ("anyOf", "oneOf") and k not in _ANNOTATIONS
        }
        result = []
        for branch in branches:
            for alt in _flatten(doc, branch, trail):
                result.append(_Alternative(_merge([base, alt.schema]), alt.ref) if base else alt)
        return result[:_MAX_ALTERNATIVES]
    return [_Alternative(schema, ref)]


def _match(
    old: list[_Alternative], new: list[_Alternative]
) -> tuple[list[tuple[_Alternative, _Alternative]], list[_Alternative], list[_Alternative]]:
    """Pair old and new alternatives: by reference name, then by type set."""
    if len(old) == 1 and len(new) == 1:
        return [(old[0], new[0])], [], []
    pairs: list[tuple[_Alternative, _Alternative]] = []
    old_left, new_left = list(old), list(new)
    for key_of in (_Alternative.label, _Alternative.types_label):
        old_counts = Counter(key_of(a) for a in old_left)
        new_counts = Counter(key_of(a) for a in new_left)
        for alt in list(old_left):
            key = key_of(alt)
            if old_counts[key] == 1 and new_counts[key] == 1:
                partner = next(b for b in new_left if key_of(b) == key)
                pairs.append((alt, partner))
                old_left.remove(alt)
                new_left.remove(partner)
    return pairs, old_left, new_left


def _format_types(types: frozenset[str]) -> str:
    return "|".join(sorted(types, key=lambda t: (t == "null", t)))


def _format_values(values: Iterable[str]) -> str:
    return ", ".join(sorted(values))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _upper_bound(schema: Mapping[str, Any]) -> _Bound | None:
    candidates: list[_Bound] = []
    maximum, exclusive = _number(schema.get("maximum")), schema.get("exclusiveMaximum")
    if maximum is not None:
        candidates.append((maximum, exclusive is True))
    if (value := _number(exclusive)) is not None:
        candidates.append((value, True))
    return min(candidates, key=lambda b: (b[0], not b[1])) if candidates else None


def _lower_bound(schema: Mapping[str, Any]) -> _Bound | None:
    candidates: list[_Bound] = []
    minimum, exclusive = _number(schema.get("minimum")), schema.get("exclusiveMinimum")
    if minimum is not None:
        candidates.append((minimum, exclusive is True))
    if (value := _number(exclusive)) is not None:
        candidates.append((value, True))
    return max(candidates, key=lambda b: (b[0], b[1])) if candidates else None


def _tighter(a: _Bound, b: _Bound, upper: bool) -> bool:
    """Whether bound `a` admits strictly fewer values than bound `b`."""
    if a[0] != b[0]:
        return a[0] < b[0] if upper else a[0] > b[0]
    return a[1] and not b[1]


def _format_bound(bound: _Bound) -> str:
    limit = bound[0]
    text = str(int(limit)) if isinstance(limit, float) and limit.is_integer() else str(limit)
    return f"{text} (exclusive)" if bound[1] else text


def _segment(name: str) -> str:
    return f".{name}" if _PLAIN_NAME.fullmatch(name) else f"[{json.dumps(name)}]"


def _required(schema: Mapping[str, Any]) -> set[str]:
    return {name for name in _as_list(schema.get("required")) if isinstance(name, str)}


# --- schema comparison -----------------------------------------------------------------------


class _SchemaWalk:
    """Compares one old schema with one new schema where the given side of the API uses it."""

    def __init__(
        self,
        old_doc: Mapping[str, Any],
        new_doc: Mapping[str, Any],
        base: str,
        side: _Side,
        out: set[ContractChange],
    ) -> None:
        self.old_doc = old_doc
        self.new_doc = new_doc
        self.base = base
        self.side: _Side = side
        self.out = out
        self.in_progress: set[tuple[tuple[str, int], tuple[str, int]]] = set()

    def emit(self, kind: str, pointer: str, detail: str, breaking: bool) -> None:
        location = f"{self.base} {pointer}" if pointer else self.base
        self.out.add(ContractChange(kind, location, detail, breaking))

    def direction(self, pointer: str, direction: _Direction, detail: str) -> None:
        """A change that only narrows or only widens the accepted values."""
        breaking = (direction == "narrowed") == (self.side == "request")
        self.emit(f"{direction}-type", pointer, detail, breaking)

    def both_ways(self, pointer: str, detail: str) -> None:
        """A change that narrows and widens at once: breaking on either side."""
        self.direction(pointer, "narrowed" if self.side == "request" else "widened", detail)

    def compare(self, old: Any, new: Any, pointer: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        old_alts = _flatten(self.old_doc, old, frozenset()) or [_Alternative({}, None)]
        new_alts = _flatten(self.new_doc, new, frozenset()) or [_Alternative({}, None)]
        old_types = frozenset[str]().union(*(a.types for a in old_alts))
        new_types = frozenset[str]().union(*(a.types for a in new_alts))
        detail = f"type {_format_types(old_types)} -> {_format_types(new_types)}"
        if any(not _covered(t, new_types) for t in old_types):
            self.direction(pointer, "narrowed", detail)
        if any(not _covered(t, old_types) for t in new_types):
            self.direction(pointer, "widened", detail)

        old_real = [a for a in old_alts if a.value_types]
        new_real = [a for a in new_alts if a.value_types]
        pairs, old_left, new_left = _match(old_real, new_real)
        for alt in old_left:
            if all(_covered(t, new_types) for t in alt.value_types):
                self.direction(pointer, "narrowed", f"alternative {alt.label()} removed")
        for alt in new_left:
            if all(_covered(t, old_types) for t in alt.value_types):
                self.direction(pointer, "widened", f"alternative {alt.label()} added")

        several = len(old_real) > 1 or len(new_real) > 1
        for old_alt, new_alt in pairs:
            key = (old_alt.key(), new_alt.key())
            if key in self.in_progress:  # a $ref cycle: this pair is already being compared
                continue
            self.in_progress.add(key)
            try:
                sub = f"{pointer}({old_alt.label()})" if several else pointer
                self.compare_alternative(old_alt, new_alt, sub, depth)
            finally:
                self.in_progress.discard(key)

    def compare_alternative(
        self, old: _Alternative, new: _Alternative, pointer: str, depth: int
    ) -> None:
        self.compare_enum(old.schema, new.schema, pointer)
        self.compare_bounds(old.schema, new.schema, pointer)
        self.compare_keywords(old.schema, new.schema, pointer)
        if "object" in old.types and "object" in new.types:
            self.compare_object(old.schema, new.schema, pointer, depth)
        has_items = "items" in old.schema or "items" in new.schema
        if has_items and "array" in old.types and "array" in new.types:
            old_items = _as_map(old.schema.get("items"))
            new_items = _as_map(new.schema.get("items"))
            self.compare(old_items, new_items, f"{pointer}[]", depth + 1)

    def compare_enum(self, old: Mapping[str, Any], new: Mapping[str, Any], pointer: str) -> None:
        old_values, new_values = _enum_values(old), _enum_values(new)
        if old_values is None and new_values is None:
            return
        if old_values is None:
            added = {_canonical(v) for v in new_values or ()}
            self.direction(pointer, "narrowed", f"enum {_format_values(added)} added")
            return
        removed = {_canonical(v) for v in old_values}
        if new_values is None:
            self.direction(pointer, "widened", f"enum {_format_values(removed)} removed")
            return
        kept = {_canonical(v) for v in new_values}
        if lost := removed - kept:
            self.direction(pointer, "narrowed", f"enum lost {_format_values(lost)}")
        if gained := kept - removed:
            self.direction(pointer, "widened", f"enum gained {_format_values(gained)}")

    def compare_bounds(self, old: Mapping[str, Any], new: Mapping[str, Any], pointer: str) -> None:
        bounds: list[tuple[str, bool, _Bound | None, _Bound | None]] = [
            ("maximum", True, _upper_bound(old), _upper_bound(new)),
            ("minimum", False, _lower_bound(old), _lower_bound(new)),
        ]
        for name, upper in _LENGTH_BOUNDS:
            old_value, new_value = _number(old.get(name)), _number(new.get(name))
            bounds.append(
                (
                    name,
                    upper,
                    None if old_value is None else (old_value, False),
                    None if new_value is None else (new_value, False),
                )
            )
        for name, upper, old_bound, new_bound in bounds:
            if old_bound == new_bound:
                continue
            if new_bound is None:
                assert old_bound is not None  # the two differ
                self.direction(pointer, "widened", f"{name} {_format_bound(old_bound)} removed")
            elif old_bound is None:
                self.direction(pointer, "narrowed", f"{name} {_format_bound(new_bound)} added")
            else:
                detail = f"{name} {_format_bound(old_bound)} -> {_format_bound(new_bound)}"
                if _tighter(new_bound, old_bound, upper):
                    self.direction(pointer, "narrowed", detail)
                elif _tighter(old_bound, new_bound, upper):
                    self.direction(pointer, "widened", detail)

    def compare_keywords(
        self, old: Mapping[str, Any], new: Mapping[str, Any], pointer: str
    ) -> None:
        for name in ("pattern", "format", "x-unresolved-ref"):
            old_value, new_value = old.get(name), new.get(name)
            if old_value == new_value:
                continue
            if old_value is None:
                self.direction(pointer, "narrowed", f"{name} {json.dumps(new_value)} added")
            elif new_value is None:
                self.direction(pointer, "widened", f"{name} {json.dumps(old_value)} removed")
            else:
                detail = f"{name} {json.dumps(old_value)} -> {json.dumps(new_value)}"
                self.both_ways(pointer, detail)
        old_unique, new_unique = old.get("uniqueItems") is True, new.get("uniqueItems") is True
        if new_unique and not old_unique:
            self.direction(pointer, "narrowed", "items must now be unique")
        elif old_unique and not new_unique:
            self.direction(pointer, "widened", "items no longer unique")

    def compare_object(
        self, old: Mapping[str, Any], new: Mapping[str, Any], pointer: str, depth: int
    ) -> None:
        old_props, new_props = _as_map(old.get("properties")), _as_map(new.get("properties"))
        old_required, new_required = _required(old), _required(new)
        old_names = set(old_props) | old_required
        new_names = set(new_props) | new_required
        for name in sorted(old_names | new_names):
            sub = f"{pointer}{_segment(name)}"
            was_required, is_required = name in old_required, name in new_required
            if name not in new_names:
                detail = "required field removed" if was_required else "optional field removed"
                self.emit("removed-field", sub, detail, True)
                continue
            if name not in old_names:
                if is_required and self.side == "request":
                    self.emit("new-required-field", sub, "new required field", True)
                else:
                    detail = "new required field" if is_required else "new optional field"
                    self.emit("added-field", sub, detail, False)
                continue
            if is_required and not was_required:
                if self.side == "request":
                    self.emit("new-required-field", sub, "optional field became required", True)
                else:
                    self.direction(sub, "narrowed", "field now always present")
            elif was_required and not is_required:
                self.direction(sub, "widened", "field no longer required")
            self.compare(old_props.get(name, {}), new_props.get(name, {}), sub, depth + 1)

        old_extra, new_extra = old.get("additionalProperties"), new.get("additionalProperties")
        if old_extra is False and new_extra is not False:
            self.direction(pointer, "widened", "additional properties now allowed")
        elif new_extra is False and old_extra is not False:
            self.direction(pointer, "narrowed", "additional properties now forbidden")
        elif _as_map(old_extra) or _as_map(new_extra):
            self.compare(_as_map(old_extra), _as_map(new_extra), f"{pointer}.*", depth + 1)
