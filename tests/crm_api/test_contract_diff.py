"""Tests of the OpenAPI contract diff that CI uses to catch breaking API changes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from crm_api.contract import ContractChange, breaking_changes, diff_openapi, render_report

Doc = dict[str, Any]

CREATE = "POST /tools/create_quote"
LIST = "GET /tools/list_quotes"
TREE = "POST /tools/tree"
REQ = f"{CREATE} request body"
RESP = f"{CREATE} response 200"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def base_doc() -> Doc:
    """A small OpenAPI 3.1 document shaped like the CRM API's (pydantic-style schemas)."""
    schemas: dict[str, Any] = {
        "Stage": {"type": "string", "enum": ["prospecting", "negotiation", "closed_won"]},
        "Criteria": {
            "type": "object",
            "properties": {
                "stage": {"anyOf": [_ref("Stage"), {"type": "null"}], "default": None},
                "min_amount": {"type": "number", "minimum": 0},
                "name": {"type": "string", "maxLength": 50, "title": "Name"},
            },
            "additionalProperties": False,
        },
        "QuoteLine": {
            "type": "object",
            "properties": {
                "sku": {"type": "string"},
                "quantity": {"type": "integer", "minimum": 1},
            },
            "required": ["sku", "quantity"],
            "additionalProperties": False,
        },
        "CreateQuoteRequest": {
            "type": "object",
            "properties": {
                "opportunity_id": {"type": "integer"},
                "criteria": _ref("Criteria"),
                "lines": {"type": "array", "items": _ref("QuoteLine")},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["opportunity_id", "lines"],
            "additionalProperties": False,
        },
        "Quote": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "status": {"type": "string", "enum": ["draft", "final"]},
                "total": {"type": "number"},
                "lines": {"type": "array", "items": _ref("QuoteLine")},
                "notes": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["id", "status", "total"],
        },
        "TreeNode": {
            "type": "object",
            "properties": {
                "label": {"type": "string"},
                "children": {"type": "array", "items": _ref("TreeNode")},
            },
            "required": ["label"],
        },
        "Error": {"type": "object", "properties": {"code": {"type": "string"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "CRM API", "version": "0.1.0"},
        "paths": {
            "/tools/create_quote": {
                "post": {
                    "operationId": "create_quote",
                    "requestBody": {"required": True, **_json(_ref("CreateQuoteRequest"))},
                    "responses": {
                        "200": {"description": "OK", **_json(_ref("Quote"))},
                        "422": {"description": "Refused", **_json(_ref("Error"))},
                    },
                }
            },
            "/tools/list_quotes": {
                "get": {
                    "operationId": "list_quotes",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "maximum": 100},
                        },
                        {
                            "name": "X-Episode",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            **_json({"type": "array", "items": _ref("Quote")}),
                        }
                    },
                }
            },
            "/tools/tree": {
                "post": {
                    "operationId": "tree",
                    "requestBody": {"required": True, **_json(_ref("TreeNode"))},
                    "responses": {"200": {"description": "OK", **_json(_ref("TreeNode"))}},
                }
            },
        },
        "components": {"schemas": schemas},
    }


def changed(mutate: Callable[[Doc], object]) -> list[ContractChange]:
    """The diff between the base document and a copy that `mutate` edited in place."""
    old = base_doc()
    new = copy.deepcopy(old)
    mutate(new)
    return diff_openapi(old, new)


def summary(changes: list[ContractChange]) -> list[tuple[str, str, bool]]:
    return [(c.kind, c.location, c.breaking) for c in changes]


def schema(doc: Doc, name: str) -> dict[str, Any]:
    result: dict[str, Any] = doc["components"]["schemas"][name]
    return result


def props(doc: Doc, name: str) -> dict[str, Any]:
    result: dict[str, Any] = schema(doc, name)["properties"]
    return result


def list_params(doc: Doc) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = doc["paths"]["/tools/list_quotes"]["get"]["parameters"]
    return result


# --- no changes ------------------------------------------------------------------------------


def test_identical_documents_have_no_changes() -> None:
    assert diff_openapi(base_doc(), base_doc()) == []
    assert breaking_changes(base_doc(), base_doc()) == []


def test_descriptions_titles_and_examples_are_ignored() -> None:
    def mutate(doc: Doc) -> None:
        doc["info"]["version"] = "0.2.0"
        props(doc, "Criteria")["name"]["title"] = "Customer name"
        props(doc, "Criteria")["name"]["description"] = "Who"
        props(doc, "Quote")["total"]["examples"] = [12.5]
        doc["paths"]["/tools/create_quote"]["post"]["summary"] = "Create a quote"

    assert changed(mutate) == []


def test_inlining_a_ref_is_not_a_change() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "CreateQuoteRequest")["criteria"] = copy.deepcopy(schema(doc, "Criteria"))

    assert changed(mutate) == []


# --- operations ------------------------------------------------------------------------------


def test_removed_operation_is_breaking_and_names_the_operation_id() -> None:
    changes = changed(lambda doc: doc["paths"].pop("/tools/create_quote"))
    assert summary(changes) == [("removed-operation", CREATE, True)]
    assert str(changes[0]) == (
        "BREAKING removed-operation: POST /tools/create_quote (operationId create_quote)"
    )


def test_removed_method_on_a_kept_path_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        item = doc["paths"]["/tools/tree"]
        item["put"] = item.pop("post")

    assert summary(changed(mutate)) == [
        ("removed-operation", TREE, True),
        ("added-operation", "PUT /tools/tree", False),
    ]


def test_changed_operation_id_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        doc["paths"]["/tools/create_quote"]["post"]["operationId"] = "make_quote"

    changes = changed(mutate)
    assert summary(changes) == [("removed-operation", CREATE, True)]
    assert "make_quote" in changes[0].detail


def test_added_operation_is_not_breaking() -> None:
    def mutate(doc: Doc) -> None:
        doc["paths"]["/tools/delete_quote"] = {
            "post": {"operationId": "delete_quote", "responses": {"204": {"description": "ok"}}}
        }

    changes = changed(mutate)
    assert summary(changes) == [("added-operation", "POST /tools/delete_quote", False)]
    assert breaking_changes(base_doc(), _apply(mutate)) == []


def _apply(mutate: Callable[[Doc], object]) -> Doc:
    doc = base_doc()
    mutate(doc)
    return doc


# --- parameters ------------------------------------------------------------------------------


def test_removed_parameter_is_breaking() -> None:
    changes = changed(lambda doc: list_params(doc).pop(0))
    assert summary(changes) == [("removed-parameter", f"{LIST} query parameter limit", True)]


def test_new_required_parameter_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        list_params(doc).append(
            {"name": "owner", "in": "query", "required": True, "schema": {"type": "string"}}
        )

    assert summary(changed(mutate)) == [
        ("new-required-parameter", f"{LIST} query parameter owner", True)
    ]


def test_parameter_made_required_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        list_params(doc)[0]["required"] = True

    changes = changed(mutate)
    assert summary(changes) == [("new-required-parameter", f"{LIST} query parameter limit", True)]
    assert changes[0].detail == "parameter became required"


def test_new_optional_parameter_is_not_breaking() -> None:
    def mutate(doc: Doc) -> None:
        list_params(doc).append({"name": "offset", "in": "query", "schema": {"type": "integer"}})

    assert summary(changed(mutate)) == [
        ("added-parameter", f"{LIST} query parameter offset", False)
    ]


def test_parameter_schema_narrowing_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        list_params(doc)[0]["schema"]["maximum"] = 50

    changes = changed(mutate)
    assert summary(changes) == [("narrowed-type", f"{LIST} query parameter limit", True)]
    assert changes[0].detail == "maximum 100 -> 50"


def test_header_parameter_names_match_case_insensitively() -> None:
    def mutate(doc: Doc) -> None:
        list_params(doc)[1]["name"] = "x-episode"

    assert changed(mutate) == []


def test_path_level_parameters_are_merged_into_operations() -> None:
    def mutate(doc: Doc) -> None:
        item = doc["paths"]["/tools/list_quotes"]
        item["parameters"] = [list_params(doc).pop(1)]

    assert changed(mutate) == []


# --- request bodies --------------------------------------------------------------------------


def test_removed_optional_request_field_nested_behind_refs_is_breaking() -> None:
    changes = changed(lambda doc: props(doc, "Criteria").pop("stage"))
    assert summary(changes) == [("removed-field", f"{REQ} .criteria.stage", True)]
    assert changes[0].detail == "optional field removed"


def test_removed_field_inside_array_items_is_breaking_in_request_and_response() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "QuoteLine").pop("quantity")
        schema(doc, "QuoteLine")["required"] = ["sku"]

    assert summary(changed(mutate)) == [
        ("removed-field", f"{LIST} response 200 [].lines[].quantity", True),
        ("removed-field", f"{REQ} .lines[].quantity", True),
        ("removed-field", f"{RESP} .lines[].quantity", True),
    ]


def test_new_required_request_field_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "CreateQuoteRequest")["currency"] = {"type": "string"}
        schema(doc, "CreateQuoteRequest")["required"].append("currency")

    assert summary(changed(mutate)) == [("new-required-field", f"{REQ} .currency", True)]


def test_optional_request_field_made_required_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        schema(doc, "CreateQuoteRequest")["required"].append("note")

    changes = changed(mutate)
    assert summary(changes) == [("new-required-field", f"{REQ} .note", True)]
    assert changes[0].detail == "optional field became required"


def test_added_optional_request_field_is_not_breaking() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "Criteria")["owner_id"] = {"anyOf": [{"type": "integer"}, {"type": "null"}]}

    assert summary(changed(mutate)) == [("added-field", f"{REQ} .criteria.owner_id", False)]


def _set_min_amount_integer(doc: Doc) -> None:
    props(doc, "Criteria")["min_amount"]["type"] = "integer"


def _drop_null_from_note(doc: Doc) -> None:
    props(doc, "CreateQuoteRequest")["note"] = {"type": "string"}


def _drop_enum_value(doc: Doc) -> None:
    schema(doc, "Stage")["enum"].remove("closed_won")


def _lower_max_length(doc: Doc) -> None:
    props(doc, "Criteria")["name"]["maxLength"] = 20


def _raise_minimum(doc: Doc) -> None:
    props(doc, "Criteria")["min_amount"]["minimum"] = 10


def _exclusive_minimum(doc: Doc) -> None:
    del props(doc, "Criteria")["min_amount"]["minimum"]
    props(doc, "Criteria")["min_amount"]["exclusiveMinimum"] = 0


def _add_pattern(doc: Doc) -> None:
    props(doc, "QuoteLine")["sku"]["pattern"] = "^[A-Z]{3}-\\d+$"


def _enum_added(doc: Doc) -> None:
    props(doc, "CreateQuoteRequest")["note"] = {"type": "string", "enum": ["urgent"]}
    props(doc, "CreateQuoteRequest")["note"]["type"] = ["string", "null"]
    props(doc, "CreateQuoteRequest")["note"]["enum"].append(None)


@pytest.mark.parametrize(
    ("mutate", "location", "detail"),
    [
        (_set_min_amount_integer, f"{REQ} .criteria.min_amount", "type number -> integer"),
        (_drop_null_from_note, f"{REQ} .note", "type string|null -> string"),
        (_drop_enum_value, f"{REQ} .criteria.stage", 'enum lost "closed_won"'),
        (_lower_max_length, f"{REQ} .criteria.name", "maxLength 50 -> 20"),
        (_raise_minimum, f"{REQ} .criteria.min_amount", "minimum 0 -> 10"),
        (_exclusive_minimum, f"{REQ} .criteria.min_amount", "minimum 0 -> 0 (exclusive)"),
        (_add_pattern, f"{REQ} .lines[].sku", 'pattern "^[A-Z]{3}-\\\\d+$" added'),
        (_enum_added, f"{REQ} .note", 'enum "urgent", null added'),
    ],
)
def test_narrowed_request_type_is_breaking(
    mutate: Callable[[Doc], None], location: str, detail: str
) -> None:
    changes = changed(mutate)
    assert [(c.kind, c.location, c.detail, c.breaking) for c in changes if c.breaking] == [
        ("narrowed-type", location, detail, True)
    ]
    # the same narrowing seen in a response (shared schema) is reported but harmless
    others = [c for c in changes if not c.breaking]
    assert all(c.kind == "narrowed-type" and " response " in c.location for c in others)


def test_changed_pattern_is_breaking_on_both_sides() -> None:
    def with_pattern(pattern: str) -> Doc:
        doc = base_doc()
        props(doc, "QuoteLine")["sku"]["pattern"] = pattern
        return doc

    changes = diff_openapi(with_pattern("^A"), with_pattern("^B"))
    assert {(c.kind, c.location, c.breaking) for c in changes} == {
        ("narrowed-type", f"{REQ} .lines[].sku", True),
        ("widened-type", f"{RESP} .lines[].sku", True),
        ("widened-type", f"{LIST} response 200 [].lines[].sku", True),
    }
    assert all(c.detail == 'pattern "^A" -> "^B"' for c in changes)


def test_widened_request_types_are_not_breaking() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "QuoteLine")["quantity"]["type"] = "number"  # integer -> number
        props(doc, "Criteria")["name"]["maxLength"] = 80
        props(doc, "CreateQuoteRequest")["opportunity_id"] = {
            "anyOf": [{"type": "integer"}, {"type": "null"}]
        }

    changes = [c for c in changed(mutate) if c.location.startswith(REQ)]
    assert summary(changes) == [
        ("widened-type", f"{REQ} .criteria.name", False),
        ("widened-type", f"{REQ} .lines[].quantity", False),
        ("widened-type", f"{REQ} .opportunity_id", False),
    ]


def test_enum_value_added_to_request_field_is_not_breaking() -> None:
    def mutate(doc: Doc) -> None:
        schema(doc, "Stage")["enum"].append("closed_lost")

    changes = changed(mutate)
    assert [(c.kind, c.location, c.detail, c.breaking) for c in changes] == [
        ("widened-type", f"{REQ} .criteria.stage", 'enum gained "closed_lost"', False)
    ]


def test_removed_request_content_type_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        body = doc["paths"]["/tools/create_quote"]["post"]["requestBody"]
        body["content"] = {"multipart/form-data": body["content"]["application/json"]}

    changes = changed(mutate)
    assert summary(changes) == [
        ("added-content-type", REQ, False),
        ("removed-content-type", REQ, True),
    ]
    assert changes[1].detail == "application/json no longer accepted"


def test_request_body_becoming_required_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        item = doc["paths"]["/tools/list_quotes"]["get"]
        item["requestBody"] = {"required": True, **_json({"type": "object"})}

    assert summary(changed(mutate)) == [
        ("added-content-type", f"{LIST} request body", False),
        ("new-required-request-body", f"{LIST} request body", True),
    ]


# --- responses -------------------------------------------------------------------------------


def test_removed_response_field_is_breaking() -> None:
    changes = changed(lambda doc: props(doc, "Quote").pop("notes"))
    assert summary(changes) == [
        ("removed-field", f"{LIST} response 200 [].notes", True),
        ("removed-field", f"{RESP} .notes", True),
    ]


def test_added_response_field_is_not_breaking() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "Quote")["currency"] = {"type": "string"}
        schema(doc, "Quote")["required"].append("currency")

    changes = changed(mutate)
    assert summary(changes) == [
        ("added-field", f"{LIST} response 200 [].currency", False),
        ("added-field", f"{RESP} .currency", False),
    ]


def test_widened_response_type_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "Quote")["total"] = {"anyOf": [{"type": "number"}, {"type": "null"}]}

    changes = [c for c in changed(mutate) if c.location.startswith(RESP)]
    assert [(c.kind, c.location, c.detail, c.breaking) for c in changes] == [
        ("widened-type", f"{RESP} .total", "type number -> number|null", True)
    ]


def test_response_enum_gaining_a_value_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "Quote")["status"]["enum"].append("expired")

    changes = [c for c in changed(mutate) if c.location.startswith(RESP)]
    assert summary(changes) == [("widened-type", f"{RESP} .status", True)]


def test_response_field_no_longer_required_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        schema(doc, "Quote")["required"].remove("total")

    changes = [c for c in changed(mutate) if c.location.startswith(RESP)]
    assert [(c.kind, c.location, c.detail, c.breaking) for c in changes] == [
        ("widened-type", f"{RESP} .total", "field no longer required", True)
    ]


def test_response_narrowing_is_not_breaking() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "Quote")["notes"] = {"type": "string"}
        props(doc, "Quote")["status"]["enum"].remove("final")

    assert breaking_changes(base_doc(), _apply(mutate)) == []
    assert {c.kind for c in changed(mutate)} == {"narrowed-type"}


def test_removed_success_status_is_breaking_but_error_statuses_are_ignored() -> None:
    def mutate(doc: Doc) -> None:
        responses = doc["paths"]["/tools/create_quote"]["post"]["responses"]
        responses["201"] = responses.pop("200")
        responses.pop("422")

    assert summary(changed(mutate)) == [
        ("removed-response-status", RESP, True),
        ("added-response-status", f"{CREATE} response 201", False),
    ]


def test_removed_response_content_type_is_breaking() -> None:
    def mutate(doc: Doc) -> None:
        doc["paths"]["/tools/create_quote"]["post"]["responses"]["200"].pop("content")

    assert summary(changed(mutate)) == [("removed-content-type", RESP, True)]


# --- composition and references --------------------------------------------------------------


def test_all_of_members_are_merged() -> None:
    def split(doc: Doc) -> None:
        schemas = doc["components"]["schemas"]
        schemas["QuoteBase"] = {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "total": {"type": "number"}},
            "required": ["id", "total"],
        }
        quote = schemas["Quote"]
        for name in ("id", "total"):
            quote["properties"].pop(name)
            quote["required"].remove(name)
        schemas["Quote"] = {"allOf": [_ref("QuoteBase"), quote]}

    assert changed(split) == []

    def split_and_drop(doc: Doc) -> None:
        split(doc)
        schema(doc, "QuoteBase")["properties"].pop("total")
        schema(doc, "QuoteBase")["required"].remove("total")

    assert summary(changed(split_and_drop)) == [
        ("removed-field", f"{LIST} response 200 [].total", True),
        ("removed-field", f"{RESP} .total", True),
    ]


def test_one_of_alternatives_are_matched_by_ref_and_a_dropped_one_is_breaking() -> None:
    def payments(*names: str) -> Callable[[Doc], None]:
        def mutate(doc: Doc) -> None:
            schemas = doc["components"]["schemas"]
            schemas["Card"] = {
                "type": "object",
                "properties": {"number": {"type": "string"}},
                "required": ["number"],
            }
            schemas["Invoice"] = {
                "type": "object",
                "properties": {"iban": {"type": "string"}},
                "required": ["iban"],
            }
            props(doc, "CreateQuoteRequest")["payment"] = {"oneOf": [_ref(n) for n in names]}

        return mutate

    old, new = _apply(payments("Card", "Invoice")), _apply(payments("Card", "Invoice"))
    schema(new, "Card")["properties"].pop("number")
    schema(new, "Card")["required"] = []
    assert summary(diff_openapi(old, new)) == [
        ("removed-field", f"{REQ} .payment(Card).number", True)
    ]

    changes = diff_openapi(old, _apply(payments("Card")))
    assert [(c.kind, c.location, c.detail, c.breaking) for c in changes] == [
        ("narrowed-type", f"{REQ} .payment", "alternative Invoice removed", True)
    ]
    assert breaking_changes(_apply(payments("Card")), old) == []


def test_self_referential_schema_terminates_and_reports_once() -> None:
    def mutate(doc: Doc) -> None:
        props(doc, "TreeNode")["label"]["maxLength"] = 10

    changes = changed(mutate)
    assert summary(changes) == [
        ("narrowed-type", f"{TREE} request body .label", True),
        ("narrowed-type", f"{TREE} response 200 .label", False),
    ]


def test_mutually_recursive_and_looping_refs_terminate() -> None:
    def cyclic(doc: Doc) -> None:
        schemas = doc["components"]["schemas"]
        schemas["A"] = {"type": "object", "properties": {"b": _ref("B"), "x": {"type": "string"}}}
        schemas["B"] = {"type": "object", "properties": {"a": _ref("A")}}
        schemas["Loop1"] = _ref("Loop2")
        schemas["Loop2"] = _ref("Loop1")
        schemas["Self"] = {"anyOf": [_ref("Self"), {"type": "null"}]}
        props(doc, "TreeNode")["a"] = _ref("A")
        props(doc, "TreeNode")["loop"] = _ref("Loop1")
        props(doc, "TreeNode")["self"] = _ref("Self")

    old = _apply(cyclic)
    assert diff_openapi(old, copy.deepcopy(old)) == []
    new = copy.deepcopy(old)
    schema(new, "A")["properties"]["x"]["type"] = "integer"
    changes = diff_openapi(old, new)
    assert {(c.location, c.breaking) for c in changes if c.kind == "narrowed-type"} == {
        (f"{TREE} request body .a.x", True),
        (f"{TREE} response 200 .a.x", False),
    }


# --- output ----------------------------------------------------------------------------------


def _many_changes(doc: Doc) -> None:
    doc["paths"].pop("/tools/tree")
    props(doc, "Quote")["currency"] = {"type": "string"}
    props(doc, "Criteria").pop("name")
    list_params(doc).pop(0)
    schema(doc, "Stage")["enum"].append("closed_lost")


def test_order_is_deterministic_and_sorted_by_location_then_kind() -> None:
    changes = changed(_many_changes)
    assert changes == sorted(changes, key=lambda c: (c.location, c.kind))

    old, new = base_doc(), _apply(_many_changes)
    shuffled_old = json.loads(json.dumps(old), object_pairs_hook=lambda p: dict(reversed(p)))
    shuffled_new = json.loads(json.dumps(new), object_pairs_hook=lambda p: dict(reversed(p)))
    assert diff_openapi(shuffled_old, shuffled_new) == changes


def test_render_report_lists_breaking_changes_first_with_counts() -> None:
    changes = changed(_many_changes)
    report = render_report(changes).splitlines()
    assert report[0] == "3 breaking changes, 3 other changes"
    assert len(report) == 1 + len(changes)
    assert all(line.startswith("BREAKING ") for line in report[1:4])
    assert not any(line.startswith("BREAKING") for line in report[4:])
    assert f"BREAKING removed-operation: {TREE} (operationId tree)" in report
    assert render_report([]) == "0 breaking changes, 0 other changes"


def test_change_str_for_non_breaking_change() -> None:
    change = ContractChange("added-field", f"{RESP} .currency", "new optional field", False)
    assert str(change) == (
        "non-breaking added-field: POST /tools/create_quote response 200 .currency"
        " (new optional field)"
    )
