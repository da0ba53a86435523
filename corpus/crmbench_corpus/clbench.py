"""Importing the customer's earlier benchmark (CL-Bench conversations, JSONL) as golden cases.

One conversation becomes one Case. What can be converted statically is: the seed (per
entity a map id -> fields, turned into seed rows with defaults for fields our schema
requires, SEED_DEFAULTS), unresolved `{{placeholders}}` (deterministic values derived from
the placeholder's name and the conversation id), argument names our API spells
differently (ARG_RENAMES) and `{{turn_N.field}}` references (`{{step_N.field}}`). The rest
is read from a replay: the reference actions run against a real CRM API episode built
from the case's seed, today and actor, and the expected state, allowed changes and
communication facts come from what that replay changed and returned. Turn texts are
completed with the argument values the reference uses, so nothing must be guessed.

Where the customer's data is inconsistent or does not run on our CRM as written (an id
that is not in the seed, a reference to a turn that does not exist, an unrendered
`{template}`, a call our API refuses, a search whose first result is a record of our
larger world), the importer repairs it when the repair is unambiguous and reports it;
otherwise the conversation is not imported. Every conversation appears in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crmbench_clients.crm_api import CrmApiClient
from crmbench_clients.errors import (
    InvalidResponse,
    RequestRefused,
    ServiceError,
    ServiceFailed,
    ServiceUnavailable,
)
from crmbench_contracts import expectations
from crmbench_contracts.api_errors import ErrorCode
from crmbench_contracts.cases import (
    FAILURE_CATEGORIES,
    Action,
    Actor,
    AllowedChange,
    Case,
    CommunicationFact,
    Difficulty,
    Expected,
    FailureSpec,
    Outcome,
    Severity,
    Split,
    StateAssertion,
    Trap,
    Turn,
)
from crmbench_contracts.expectations import (
    FinalState,
    LoggedChange,
    Unresolvable,
    equal,
    select,
)
from crmbench_contracts.seeds import SeedRows
from crmbench_corpus.builder import (
    DEAL_KINDS,
    FIRST,
    INDUSTRIES,
    PEOPLE_FIRST,
    PEOPLE_LAST,
    SECOND,
    TITLES,
)
from crmbench_corpus.replay import ReplayError, StepOutcome, replay, resolve
from crmbench_corpus.store import CASES_FILE, MANIFEST_FILE, case_line, content_hash

TODAY = date(2025, 11, 12)
ACTOR_NAME = "Sam Rivera"
CASE_PREFIX = "CLB-"
REPORT_FILE = "import_report.json"
TAG = "clbench"
INCONSISTENT_TAG = "clbench:inconsistent"
MAX_ATTEMPTS = 6
MAX_SEARCH_PAGES = 40

TABLES = ("client", "company", "contact", "opportunity", "quote", "contract", "document", "note")
ENTITY_NAMES = {
    "client": "client", "clients": "client", "company": "company", "companies": "company",
    "contact": "contact", "contacts": "contact", "opportunity": "opportunity",
    "opportunities": "opportunity", "quote": "quote", "quotes": "quote",
    "contract": "contract", "contracts": "contract", "document": "document",
    "documents": "document", "note": "note", "notes": "note",
}  # fmt: skip
TIMESTAMP_FIELDS = frozenset({"created_date", "created_at", "uploaded_at"})
ACTOR_FIELDS = frozenset({"uploaded_by", "created_by"})
NUMERIC_FIELDS = frozenset({"amount", "value", "probability"})
PAGING_ARGS = frozenset({"limit", "offset"})

# Seed fields our schema requires, filled when a conversation's seed lacks them. `None`
# means "derived" (a name from the id, a foreign key from the seed's only candidate).
SEED_DEFAULTS: dict[str, dict[str, Any]] = {
    "client": {"name": None, "status": "Prospect"},
    "company": {"name": None},
    "contact": {"first_name": "Unknown", "last_name": None, "client_id": None},
    "opportunity": {"name": None, "client_id": None, "stage": "Prospecting", "amount": 10000},
    "quote": {"opportunity_id": None, "version": "1", "amount": None, "status": "Draft"},
    "contract": {"client_id": None},
    "document": {"file_name": "document.pdf"},
    "note": {"content": "Imported note."},
}
SEED_FOREIGN_KEYS: dict[str, dict[str, str]] = {
    "contact": {"client_id": "client"},
    "opportunity": {"client_id": "client"},
    "quote": {"opportunity_id": "opportunity"},
    "contract": {"client_id": "client", "opportunity_id": "opportunity"},
}
SEED_FIELD_RENAMES: dict[str, dict[str, str]] = {"document": {"document_url": "file_url"}}
ARG_RENAMES: dict[str, dict[str, str]] = {"upload_document": {"document_url": "file_url"}}

# The customer's task names (agent_tasks.csv) per tool, for conversations whose id does
# not name the task ("SKEL-<TASK>_...").
TASK_BY_TOOL = {
    "create_new_client": "CREATE NEW CLIENT", "modify_client": "MODIFY CLIENT",
    "client_search": "CLIENT SEARCH", "list_clients": "CLIENT SEARCH",
    "create_new_contact": "CREATE NEW CONTACT", "modify_contact": "MODIFY CONTACT",
    "contact_search": "CONTACT SEARCH", "list_contacts": "CONTACT SEARCH",
    "create_new_opportunity": "CREATE NEW OPPORTUNITY",
    "modify_opportunity": "MODIFY OPPORTUNITY", "delete_opportunity": "DELETE OPPORTUNITY",
    "clone_opportunity": "CLONE OPPORTUNITY", "opportunity_search": "OPPORTUNITY SEARCH",
    "list_opportunities": "OPPORTUNITY SEARCH",
    "view_opportunity_details": "VIEW OPPORTUNITY DETAILS",
    "opportunity_details": "OPPORTUNITY DETAILS",
    "summarize_opportunities": "SUMMARIZE OPPORTUNITIES",
    "summarize_counts": "SUMMARIZE OPPORTUNITIES", "create_quote": "CREATE QUOTE",
    "modify_quote": "MODIFY QUOTE", "delete_quote": "DELETE QUOTE",
    "cancel_quote": "CANCEL QUOTE", "quote_details": "QUOTE DETAILS",
    "compare_quotes": "COMPARE QUOTES", "compare_quote_details": "COMPARE QUOTE DETAILS",
    "quote_search": "QUOTE SEARCH", "list_quotes": "QUOTE SEARCH",
    "quote_prefixes": "QUOTE PREFIXES", "create_contract": "CREATE NEW CONTRACT",
    "contract_search": "CONTRACT SEARCH", "list_contracts": "CONTRACT SEARCH",
    "company_search": "COMPANY SEARCH", "list_companies": "COMPANY SEARCH",
    "upload_document": "UPLOAD DOCUMENT", "list_documents": "UPLOAD DOCUMENT",
    "add_note": "ADD NOTE", "list_notes": "ADD NOTE",
}  # fmt: skip
# Which table a page of results holds, per reading tool.
RESULT_TABLE = {
    "client_search": "client", "list_clients": "client", "contact_search": "contact",
    "list_contacts": "contact", "opportunity_search": "opportunity",
    "list_opportunities": "opportunity", "quote_search": "quote", "list_quotes": "quote",
    "contract_search": "contract", "list_contracts": "contract",
    "company_search": "company", "list_companies": "company",
    "list_documents": "document", "list_notes": "note",
}  # fmt: skip
# What a user asks for, per tool: the text of a turn whose template cannot be rendered.
TOOL_REQUESTS = {
    "client_search": "Find clients", "contact_search": "Find contacts",
    "opportunity_search": "Find opportunities", "quote_search": "Find quotes",
    "contract_search": "Find contracts", "company_search": "Find companies",
    "upload_document": "Attach a document", "add_note": "Add a note",
    "view_opportunity_details": "Show me the opportunity with everything attached to it",
    "opportunity_details": "Show me the opportunity", "quote_details": "Show me the quote",
    "create_new_opportunity": "Create an opportunity", "create_new_client": "Add a client",
    "create_new_contact": "Add a contact", "create_quote": "Create a quote",
    "create_contract": "Create a contract",
}  # fmt: skip
NO_MATCH_PHRASES = ["no matching", "no results", "none", "nothing", "zero", "not find",
                    "n't find", "no record"]  # fmt: skip
PLURALS = {"company": "companies", "opportunity": "opportunities"}
DECIDABLE_FIXES = frozenset({"ENUM_CASE_MISMATCH", "ENUM_WHITESPACE", "INVALID_ENUM"})

_DOUBLE = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_TURN_REF = re.compile(r"^turn_(\d+)\.([A-Za-z0-9_.]+)$")
_STEP_REF = re.compile(r"\{\{\s*step_(\d+)\.([A-Za-z0-9_.]+)\s*\}\}")
_SINGLE = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")
_SKELETON_TASK = re.compile(r"^SKEL-([A-Z][A-Z ]*[A-Z])_")

Row = dict[str, Any]
Tables = dict[str, list[Row]]


class ImportStatus(StrEnum):
    IMPORTED = "imported"
    REPAIRED = "imported-with-repairs"
    NOT_IMPORTED = "not imported"


class Unimportable(Exception):
    """A conversation that cannot become a sound case; the message says why."""


class CrmApiUnavailable(RuntimeError):
    """The CRM API to replay against cannot be used (unreachable, or the admin key is wrong)."""


# ---------------------------------------------------------------------------- input


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ClResponse(_Lenient):
    text: str | None = None


class ClTurn(_Lenient):
    """One turn of a CL-Bench conversation: the user's words and the call it expects."""

    turn_id: int
    user_utterance: str
    expected_tool: str | None = None
    expected_args: dict[str, Any] = Field(default_factory=dict)
    expect_success: bool = True
    expected_error_substring: str | None = None
    failure_category: str | None = None
    expected_response: ClResponse | None = None

    @field_validator("expected_args", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class ClConversation(_Lenient):
    """A CL-Bench conversation; fields this importer does not use are ignored."""

    conversation_id: str = Field(min_length=1)
    workflow_category: str | None = None
    complexity_level: str | None = None
    turns: list[ClTurn] = Field(min_length=1)
    initial_entities: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------- report


@dataclass
class ImportEntry:
    """What became of one conversation of the input file."""

    line: int
    conversation_id: str
    status: ImportStatus
    reason: str
    case_id: str | None = None
    repairs: list[str] = field(default_factory=list)
    """Changes to the customer's data without which it would not run or check anything."""
    notes: list[str] = field(default_factory=list)
    """Routine conversions: defaults filled, placeholders replaced, texts completed."""

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "conversation_id": self.conversation_id,
            "case_id": self.case_id,
            "status": self.status.value,
            "reason": self.reason,
            "repairs": self.repairs,
            "notes": self.notes,
        }


@dataclass
class ImportResult:
    source: str
    cases: list[Case]
    entries: list[ImportEntry]

    def counts(self) -> dict[str, int]:
        tally = {status.value: 0 for status in ImportStatus}
        for entry in self.entries:
            tally[entry.status.value] += 1
        return tally

    def report(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "total": len(self.entries),
            **self.counts(),
            "entries": [entry.as_json() for entry in self.entries],
        }


def render_report(result: ImportResult, width: int = 72) -> str:
    """The import report as a plain-text table, one row per conversation."""
    rows = [("line", "conversation_id", "case_id", "status", "reason")]
    for entry in result.entries:
        reason = entry.reason if len(entry.reason) <= width else entry.reason[: width - 1] + "…"
        rows.append(
            (str(entry.line), entry.conversation_id, entry.case_id or "-", entry.status, reason)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for number, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(4)] + [row[4]]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    tally = result.counts()
    lines.append(
        f"{len(result.entries)} conversation(s): " + ", ".join(f"{v} {k}" for k, v in tally.items())
    )
    return "\n".join(lines)


def write_import(result: ImportResult, out: Path) -> dict[str, Any]:
    """Writes cases.jsonl, manifest.json and import_report.json; returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [case_line(case) for case in result.cases]
    (out / CASES_FILE).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    manifest = {
        "generator": "clbench-import",
        "source": result.source,
        "total": len(result.cases),
        "conversations": len(result.entries),
        "content_hash": content_hash(lines),
        "report": REPORT_FILE,
    }
    (out / MANIFEST_FILE).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    (out / REPORT_FILE).write_text(
        json.dumps(result.report(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return manifest


# ---------------------------------------------------------------------------- small helpers


def case_id_for(conversation_id: str) -> str:
    return CASE_PREFIX + hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:10]


def _pk(table: str) -> str:
    return f"{table}_id"


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode("utf-8")).digest()[:8], "big")


def _plain(value: Any) -> Any:
    """A state value as a case writes it: whole floats as ints, the rest unchanged."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _text(value: Any) -> str:
    value = _plain(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)


def _number_forms(value: float) -> list[str]:
    forms = [_text(value)]
    if float(value).is_integer():
        whole = int(value)
        forms.append(f"{whole:,}")
        if whole % 1000 == 0 and whole:
            forms.append(f"{whole // 1000}k")
    return forms


def _mentioned(text: str, value: Any) -> bool:
    lowered = text.casefold()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return any(form.casefold() in lowered for form in _number_forms(value))
    return _text(value).casefold() in lowered


def _table_of_key(key: str, args: Mapping[str, Any]) -> str | None:
    """The table an id-valued argument points at (client_id -> client; entity_id by type)."""
    if key == "entity_id":
        entity = args.get("entity_type")
        return ENTITY_NAMES.get(entity.lower()) if isinstance(entity, str) else None
    if key.endswith("_id"):
        table = key[: -len("_id")]
        return table if table in TABLES else None
    return None


def _display_name(table: str, row: Mapping[str, Any]) -> str | None:
    if table == "contact":
        return f"{row.get('first_name', '')} {row.get('last_name', '')}".strip() or None
    if table == "document":
        return row.get("file_name")
    name = row.get("name")
    return name if isinstance(name, str) else None


@dataclass(frozen=True)
class ToolFields:
    """The field names of one tool's request and result, as the CRM API documents them."""

    arguments: frozenset[str]
    criteria: frozenset[str] | None
    """Fields of its `criteria` object, when it takes one (the searches)."""
    results: frozenset[str]
    """Fields of its result, plus those of its page's items."""


def _component(node: Any, components: Mapping[str, Any]) -> dict[str, Any]:
    """`node` with a `$ref` to a component schema followed; {} for anything else."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        return _component(components.get(node["$ref"].rsplit("/", 1)[-1]), components)
    return node if isinstance(node, dict) else {}


def _properties(node: Any, components: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(_component(node, components).get("properties", {}))


def tool_fields(openapi: Mapping[str, Any]) -> dict[str, ToolFields]:
    """Per tool (POST /tools/{name} operation), its field names, from an OpenAPI document."""
    components = openapi.get("components", {}).get("schemas", {})
    tools: dict[str, ToolFields] = {}
    for path, item in openapi.get("paths", {}).items():
        if not path.startswith("/tools/") or "post" not in item:
            continue
        operation = item["post"]

        def body(content: Any) -> Any:
            return (content or {}).get("content", {}).get("application/json", {}).get("schema")

        request = _component(body(operation.get("requestBody")), components)
        criteria = request.get("properties", {}).get("criteria")
        # Only a criteria object of its own (not an optional one) is lifted into.
        direct = isinstance(criteria, dict) and "$ref" in criteria
        result = _component(body(operation.get("responses", {}).get("200")), components)
        results = set(result.get("properties", {}))
        items = result.get("properties", {}).get("items")
        page_item = items.get("items") if isinstance(items, dict) else None
        if isinstance(page_item, dict) and "$ref" in page_item:
            results |= _properties(page_item, components)
        tools[operation["operationId"]] = ToolFields(
            arguments=frozenset(request.get("properties", {})),
            criteria=_properties(criteria, components) if direct else None,
            results=frozenset(results),
        )
    return tools


def _flat_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments with search criteria lifted to the top level, without paging."""
    flat = {k: v for k, v in args.items() if k != "criteria" and k not in PAGING_ARGS}
    criteria = args.get("criteria")
    if isinstance(criteria, dict):
        flat.update(criteria)
    return flat


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _map_strings(value: Any, convert: Callable[[str], Any]) -> Any:
    if isinstance(value, str):
        return convert(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, convert) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, convert) for v in value]
    return value


# ---------------------------------------------------------------------------- placeholders


def placeholder_value(name: str, conversation_id: str, seed: Mapping[str, list[Row]]) -> Any:
    """A deterministic value for an unresolved {{placeholder}}, chosen by its name.

    Ids name the seed's only record of that entity; numbers stay numbers; anything else
    is a readable string derived from the name and the conversation id.
    """
    key = name.lower()
    h = _digest(conversation_id, key)
    if key.endswith("_id") or key == "id":
        table = ENTITY_NAMES.get(key[: -len("_id")], "")
        rows = seed.get(table, [])
        if len(rows) == 1:
            return rows[0][_pk(table)]
        raise Unimportable(f"placeholder {{{{{name}}}}} names an id the seed cannot supply")
    if "email" in key:
        return f"{PEOPLE_FIRST[h % len(PEOPLE_FIRST)].lower()}.{h % 10_000:04d}@example.com"
    if "first" in key:
        return PEOPLE_FIRST[h % len(PEOPLE_FIRST)]
    if "last" in key:
        return PEOPLE_LAST[h % len(PEOPLE_LAST)]
    if any(word in key for word in ("amount", "value", "price", "budget")):
        return 5_000 + (h % 390) * 500
    if "probability" in key:
        return 10 + (h % 9) * 10
    if "date" in key:
        return (TODAY + timedelta(days=30 + h % 150)).isoformat()
    if "stage" in key:
        return ["Prospecting", "Qualification", "Proposal", "Negotiation"][h % 4]
    if "title" in key:
        return TITLES[h % len(TITLES)]
    if "industry" in key:
        return INDUSTRIES[h % len(INDUSTRIES)]
    if "phone" in key:
        return f"555-01{h % 100:02d}"
    if "url" in key:
        return f"https://files.example.com/{h % 100_000:05d}.pdf"
    if "file" in key:
        return f"file_{h % 100_000:05d}.pdf"
    if any(word in key for word in ("opportunity", "deal")):
        return f"{FIRST[h % len(FIRST)]} {DEAL_KINDS[(h >> 8) % len(DEAL_KINDS)]}"
    if any(word in key for word in ("client", "company", "account", "customer")):
        return f"{FIRST[h % len(FIRST)]} {SECOND[(h >> 8) % len(SECOND)]}"
    if "name" in key:
        return f"{FIRST[h % len(FIRST)]} {DEAL_KINDS[(h >> 8) % len(DEAL_KINDS)]}"
    words = " ".join(part.capitalize() for part in key.split("_") if part)
    return f"{words or 'Value'} {h % 10_000:04d}"


# ---------------------------------------------------------------------------- the draft


@dataclass
class _Step:
    """One reference action in the making (one turn with a tool)."""

    turn: int
    """1-based position of the turn in the conversation."""
    turn_id: int
    tool: str
    args: dict[str, Any]
    expects_failure: bool
    expect_error: str | None
    error_substring: str | None


@dataclass
class _Draft:
    conversation: ClConversation
    case_id: str
    seed: dict[str, list[Row]]
    role: str
    texts: list[str]
    """Per turn: the user's words with {{step_N.path}} references still in them."""
    step_of_turn: list[int | None]
    steps: list[_Step]
    tools: Mapping[str, ToolFields]
    """The CRM API's tools, by name."""
    notes: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    inconsistent: bool = False
    pins: dict[tuple[int, str], Any] = field(default_factory=dict)
    """{{step_N.path}} references fixed to a value: (N, path) -> value."""
    placeholders: dict[str, Any] = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)

    def repair(self, message: str, *, inconsistent: bool = False) -> None:
        if message not in self.repairs:
            self.repairs.append(message)
        self.inconsistent = self.inconsistent or inconsistent

    def note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)

    def seed_ids(self, table: str) -> list[str]:
        return [row[_pk(table)] for row in self.seed.get(table, [])]

    def actions(self) -> list[Action]:
        return [
            Action(tool=step.tool, args=self.pinned(step.args), expect_error=step.expect_error)
            for step in self.steps
        ]

    def pinned(self, value: Any) -> Any:
        """`value` with every pinned {{step_N.path}} replaced by its value."""

        def convert(text: str) -> Any:
            whole = _STEP_REF.fullmatch(text.strip())
            if whole and (int(whole.group(1)), whole.group(2)) in self.pins:
                return self.pins[(int(whole.group(1)), whole.group(2))]

            def sub(match: re.Match[str]) -> str:
                key = (int(match.group(1)), match.group(2))
                return _text(self.pins[key]) if key in self.pins else match.group(0)

            return _STEP_REF.sub(sub, text)

        return _map_strings(value, convert)


def _seed_rows(conversation: ClConversation, draft_notes: list[str]) -> dict[str, list[Row]]:
    """Seed rows of our tables from CL-Bench seed_data (entity -> id -> fields)."""
    seed_data = conversation.initial_entities.get("seed_data") or {}
    if not isinstance(seed_data, dict):
        raise Unimportable("initial_entities.seed_data is not an object")
    seed: dict[str, list[Row]] = {}
    for entity, records in seed_data.items():
        table = ENTITY_NAMES.get(str(entity).strip().lower())
        if table is None:
            draft_notes.append(f"seed entity {entity!r} has no table here; ignored")
            continue
        if not records:
            continue
        if not isinstance(records, dict):
            raise Unimportable(f"seed_data.{entity} is not a map of id -> fields")
        allowed = _seed_fields(table)
        renames = SEED_FIELD_RENAMES.get(table, {})
        for record_id, fields in records.items():
            if not isinstance(fields, dict):
                raise Unimportable(f"seed_data.{entity}.{record_id} is not an object")
            row: Row = {_pk(table): str(record_id)}
            for name, value in fields.items():
                name = renames.get(name, name)
                if name == _pk(table):
                    continue
                if name not in allowed:
                    draft_notes.append(f"seed {table}.{name} is not a field of our schema; dropped")
                    continue
                row[name] = value
            seed.setdefault(table, []).append(row)
    return seed


def _seed_fields(table: str) -> set[str]:
    """Fields of our seed rows of `table` (the CRM API's seed schema)."""
    for arg in typing.get_args(SeedRows.model_fields[table].annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return set(arg.model_fields)
    raise LookupError(table)  # pragma: no cover - every table has a seed model


def _fill_seed(draft: _Draft, world_ids: Mapping[str, set[str]]) -> None:
    """Fills required fields, repairs foreign keys and duplicate quote versions."""
    filled: dict[str, int] = {}

    def fill(table: str, row: Row, name: str, value: Any) -> None:
        row[name] = value
        key = f"{table}.{name}"
        filled[key] = filled.get(key, 0) + 1

    def only(table: str) -> str | None:
        ids = draft.seed_ids(table)
        return ids[0] if len(ids) == 1 else None

    for table in TABLES:
        for row in draft.seed.get(table, []):
            record = row[_pk(table)]
            for name, default in SEED_DEFAULTS.get(table, {}).items():
                if row.get(name) not in (None, ""):
                    continue
                value = default
                if name in SEED_FOREIGN_KEYS.get(table, {}):
                    target = SEED_FOREIGN_KEYS[table][name]
                    value = only(target)
                    if name == "client_id" and table == "contract" and row.get("opportunity_id"):
                        opp = _seed_row(draft.seed, "opportunity", row["opportunity_id"])
                        value = opp.get("client_id") if opp else value
                    if value is None:
                        raise Unimportable(
                            f"seed {table} {record} has no {name} and the seed has no single "
                            f"{target} to use"
                        )
                elif name in ("name", "last_name"):
                    value = f"{table.capitalize()} {record[:8]}"
                elif table == "quote" and name == "amount":
                    opp = _seed_row(draft.seed, "opportunity", row.get("opportunity_id"))
                    value = opp.get("amount", 10000) if opp else 10000
                if value is not None:
                    fill(table, row, name, value)
            for name, target in SEED_FOREIGN_KEYS.get(table, {}).items():
                value = row.get(name)
                if value is None or value in draft.seed_ids(target):
                    continue
                if value in world_ids.get(target, set()):
                    continue
                replacement = only(target)
                if replacement is None:
                    raise Unimportable(
                        f"seed {table} {record} points at {target} {value}, which is neither in "
                        "the seed nor in the world"
                    )
                row[name] = replacement
                draft.repair(
                    f"seed {table} {record}: {name} {value} is not in the seed; "
                    f"used the seed's only {target} {replacement}",
                    inconsistent=True,
                )
    _renumber_quote_versions(draft)
    for key, number in sorted(filled.items()):
        draft.filled.append(key)
        draft.note(f"filled {key} with its default in {number} seed row(s)")


def _seed_row(seed: Mapping[str, list[Row]], table: str, record: Any) -> Row | None:
    for row in seed.get(table, []):
        if row[_pk(table)] == record:
            return row
    return None


def _renumber_quote_versions(draft: _Draft) -> None:
    by_opportunity: dict[str, list[Row]] = {}
    for row in draft.seed.get("quote", []):
        by_opportunity.setdefault(str(row.get("opportunity_id")), []).append(row)
    for opportunity, quotes in by_opportunity.items():
        versions = [str(q.get("version")) for q in quotes]
        if len(set(versions)) == len(versions):
            continue
        for number, quote in enumerate(quotes, start=1):
            quote["version"] = str(number)
        draft.repair(
            f"seed quotes of opportunity {opportunity} share a version ({', '.join(versions)}); "
            "renumbered 1..n in seed order (a version is unique per opportunity)",
            inconsistent=True,
        )


def _validate_seed(seed: Mapping[str, list[Row]]) -> None:
    try:
        SeedRows.model_validate(dict(seed))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise Unimportable(f"seed row does not fit our schema at {where}: {first['msg']}") from None


def _difficulty(conversation: ClConversation, draft: _Draft) -> Difficulty:
    level = (conversation.complexity_level or "").strip().lower()
    if level in {d.value for d in Difficulty}:
        return Difficulty(level)
    turns = len(conversation.turns)
    guessed = (
        Difficulty.SIMPLE if turns == 1 else Difficulty.MEDIUM if turns <= 6 else Difficulty.COMPLEX
    )
    draft.note(f"complexity_level {conversation.complexity_level!r} unknown; {guessed} by turns")
    return guessed


def _task_category(conversation: ClConversation, first_tool: str) -> str:
    match = _SKELETON_TASK.match(conversation.conversation_id)
    if match:
        return match.group(1)
    return TASK_BY_TOOL.get(first_tool, first_tool.replace("_", " ").upper())


def _draft(
    conversation: ClConversation,
    world_ids: Mapping[str, set[str]],
    tools: Mapping[str, ToolFields],
) -> _Draft:
    """The static conversion: seed, placeholders, argument names and references."""
    notes: list[str] = []
    seed = _seed_rows(conversation, notes)
    ids = [t.turn_id for t in conversation.turns]
    if len(set(ids)) != len(ids):
        raise Unimportable("turn_id values repeat")
    draft = _Draft(
        conversation=conversation,
        case_id=case_id_for(conversation.conversation_id),
        seed=seed,
        role="sales_rep",
        texts=[],
        step_of_turn=[],
        steps=[],
        tools=tools,
    )
    for message in notes:
        draft.note(message)
    _fill_seed(draft, world_ids)
    _validate_seed(draft.seed)

    step_by_turn_id: dict[int, int] = {}
    for position, turn in enumerate(conversation.turns, start=1):
        tool = turn.expected_tool
        if tool and tool not in draft.tools:
            raise Unimportable(f"turn {turn.turn_id}: {tool!r} is not a tool of the CRM API")
        step_no = len(draft.steps) + 1 if tool else None
        convert = _Converter(draft, turn, step_no, step_by_turn_id)
        text = _map_strings(turn.user_utterance, convert.text)
        draft.texts.append(text)
        draft.step_of_turn.append(step_no)
        if not tool or step_no is None:
            continue
        args = _map_strings(turn.expected_args, convert.value)
        args = _normalise_args(draft, turn, tool, args)
        code = (turn.failure_category or "").strip().upper() or None
        expects_failure = not turn.expect_success
        expect_error = code if expects_failure and code in ErrorCode.__members__ else None
        draft.steps.append(
            _Step(
                position,
                turn.turn_id,
                tool,
                args,
                expects_failure,
                expect_error,
                turn.expected_error_substring,
            )
        )
        step_by_turn_id[turn.turn_id] = step_no
    if not draft.steps:
        raise Unimportable("no turn expects a tool call")
    if any(step.tool.startswith("delete_") for step in draft.steps):
        draft.role = "manager"
        draft.note("actor is a manager: the conversation deletes a record")
    _repair_literal_ids(draft, world_ids)
    for position, text in enumerate(draft.texts):
        draft.texts[position] = _render_templates(draft, position, text)
    return draft


class _Converter:
    """Replaces {{placeholders}} and converts {{turn_N.path}} for one turn."""

    def __init__(
        self, draft: _Draft, turn: ClTurn, step_no: int | None, step_by_turn_id: dict[int, int]
    ) -> None:
        self.draft = draft
        self.turn = turn
        self.step_no = step_no
        self.step_by_turn_id = step_by_turn_id

    def _reference(self, turn_id: int, path: str) -> Any:
        """{{turn_N.path}} as a {{step_M.path}} reference, or a repaired value."""
        step = self.step_by_turn_id.get(turn_id)
        if step is not None:
            return f"{{{{step_{step}.{path}}}}}"
        field_name = path.split(".")[-1]
        problem = f"turn {self.turn.turn_id} refers to turn {turn_id}, " + (
            "which does not exist" if turn_id not in self._turn_ids() else "which is not earlier"
        )
        table = ENTITY_NAMES.get(field_name[: -len("_id")]) if field_name.endswith("_id") else None
        if table:
            ids = self.draft.seed_ids(table)
            if len(ids) == 1:
                self.draft.repair(
                    f"{problem}; used the seed's only {table} {ids[0]} for {field_name}",
                    inconsistent=True,
                )
                return ids[0]
        for earlier in range(len(self.draft.steps), 0, -1):
            if field_name in self.draft.tools[self.draft.steps[earlier - 1].tool].results:
                self.draft.repair(
                    f"{problem}; used the result of turn {self.draft.steps[earlier - 1].turn_id} "
                    f"(the latest with a {field_name})",
                    inconsistent=True,
                )
                return f"{{{{step_{earlier}.{path}}}}}"
        raise Unimportable(f"{problem} and nothing earlier supplies {field_name}")

    def _turn_ids(self) -> set[int]:
        return {t.turn_id for t in self.draft.conversation.turns}

    def _placeholder(self, name: str) -> Any:
        if name not in self.draft.placeholders:
            value = placeholder_value(
                name, self.draft.conversation.conversation_id, self.draft.seed
            )
            self.draft.placeholders[name] = value
            self.draft.note(f"placeholder {{{{{name}}}}} replaced with {_text(value)!r}")
        return self.draft.placeholders[name]

    def _replacement(self, inner: str) -> Any:
        ref = _TURN_REF.match(inner)
        if ref:
            return self._reference(int(ref.group(1)), ref.group(2))
        if _STEP_REF.fullmatch(f"{{{{{inner}}}}}"):
            return f"{{{{{inner}}}}}"
        return self._placeholder(inner)

    def value(self, text: str) -> Any:
        whole = _DOUBLE.fullmatch(text.strip())
        if whole:
            return self._replacement(whole.group(1))
        return self.text(text)

    def text(self, text: str) -> str:
        return _DOUBLE.sub(lambda m: _text(self._replacement(m.group(1))), text)


def _normalise_args(draft: _Draft, turn: ClTurn, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """Argument names as our API spells them; search criteria under `criteria`."""
    args = dict(args)
    for old, new in ARG_RENAMES.get(tool, {}).items():
        if old in args and new not in args:
            args[new] = args.pop(old)
            draft.note(f"{tool}: argument {old} renamed {new}")
    fields = draft.tools[tool].arguments
    criteria_fields = draft.tools[tool].criteria
    if criteria_fields is not None:
        lifted = [k for k in args if k not in fields and k in criteria_fields]
        if lifted:
            criteria = dict(args.get("criteria") or {})
            for key in lifted:
                criteria[key] = args.pop(key)
            args["criteria"] = criteria
            draft.note(f"{tool}: {', '.join(lifted)} moved under criteria")
    if not turn.expect_success:
        return args  # a turn meant to fail may carry an unknown field on purpose
    unknown = [k for k in args if k not in fields]
    for key in unknown:
        args.pop(key)
    if unknown:
        draft.repair(
            f"turn {turn.turn_id}: {tool} has no argument {', '.join(unknown)}; dropped",
            inconsistent=True,
        )
    given = args.get("criteria")
    if criteria_fields is not None and isinstance(given, dict):
        unknown = [k for k in given if k not in criteria_fields]
        if unknown:
            args["criteria"] = {k: v for k, v in given.items() if k in criteria_fields}
            draft.repair(
                f"turn {turn.turn_id}: {tool} cannot search by {', '.join(unknown)}; dropped",
                inconsistent=True,
            )
    return args


def _repair_literal_ids(draft: _Draft, world_ids: Mapping[str, set[str]]) -> None:
    """An id in the expected arguments that is neither seeded nor in the world is replaced
    by the seed's only record of that entity (the data's own inconsistency)."""
    replaced: dict[str, str] = {}
    for step in draft.steps:
        if step.expects_failure:
            continue
        for key, value in _flat_args(step.args).items():
            if not isinstance(value, str) or "{{" in value or value in replaced:
                continue
            table = _table_of_key(key, _flat_args(step.args))
            if table is None or value in draft.seed_ids(table) or value in world_ids[table]:
                continue
            ids = draft.seed_ids(table)
            if len(ids) != 1:
                continue  # a record created earlier in the conversation, or a true error
            replaced[value] = ids[0]
            draft.repair(
                f"turn {step.turn_id}: {key} {value} is not in the seed; used the seed's only "
                f"{table} {ids[0]}",
                inconsistent=True,
            )
    if not replaced:
        return

    def swap(text: str) -> str:
        for old, new in replaced.items():
            text = text.replace(old, new)
        return text

    for step in draft.steps:
        step.args = _map_strings(step.args, swap)
    draft.texts = [swap(text) for text in draft.texts]


def _render_templates(draft: _Draft, position: int, text: str) -> str:
    """Fills single-brace {templates} from the turn's arguments, or rewrites the request."""
    names = _SINGLE.findall(text)
    if not names:
        return text
    step_no = draft.step_of_turn[position]
    step = draft.steps[step_no - 1] if step_no else None
    args = step.args if step else {}
    flat = _flat_args(args)
    values: dict[str, str] = {}
    for name in names:
        if name == "criteria" and isinstance(args.get("criteria"), dict) and args["criteria"]:
            values[name] = _criteria_text(args["criteria"])
        elif name in flat and flat[name] not in (None, ""):
            values[name] = _text(flat[name])
        elif name.endswith("_id") and _table_of_key("entity_id", flat) == name[: -len("_id")]:
            values[name] = _text(flat["entity_id"])
    turn_id = draft.conversation.turns[position].turn_id
    missing = [n for n in names if n not in values]
    if not missing:
        draft.note(
            f"turn {turn_id}: template {', '.join(sorted(set(names)))} filled from its arguments"
        )
        return _SINGLE.sub(lambda m: values[m.group(1)], text)
    tool = step.tool if step else ""
    request = _request_phrase(tool, args)
    draft.repair(
        f"turn {turn_id}: {text!r} leaves {{{', '.join(missing)}}} unrendered and its arguments "
        f"do not supply it; asked as {request!r}",
        inconsistent=True,
    )
    return request


def _request_phrase(tool: str, args: Mapping[str, Any]) -> str:
    table = RESULT_TABLE.get(tool)
    if table and not _flat_args(args):
        plural = PLURALS.get(table, table + "s")
        return f"Show me all {plural}"
    return TOOL_REQUESTS.get(tool, tool.replace("_", " ").capitalize())


def _criteria_text(criteria: Mapping[str, Any]) -> str:
    return " and ".join(f"{k.replace('_', ' ')} {_text(v)}" for k, v in criteria.items())


# ---------------------------------------------------------------------------- the CRM API


async def _open(api: CrmApiClient, seed: Mapping[str, list[Row]], role: str) -> tuple[str, str]:
    """A fresh episode of the world plus `seed`, on the import's day and actor."""
    try:
        opened = await api.open_episode(
            today=TODAY, actor={"name": ACTOR_NAME, "role": role}, seed=seed
        )
    except RequestRefused as exc:
        if exc.status in (401, 403):
            raise CrmApiUnavailable(
                f"the CRM API refused the admin key ({exc.code}: {exc.message})"
            ) from None
        raise Unimportable(f"the CRM API refused the episode: {exc.code}: {exc.message}") from None
    except ServiceUnavailable:
        raise
    except ServiceError as exc:
        raise Unimportable(f"the CRM API refused the episode: {exc.code}: {exc.message}") from None
    return opened.episode_id, opened.token


async def _close(api: CrmApiClient, episode_id: str) -> None:
    # A failed drop must not hide the attempt's outcome; the reaper removes the episode.
    with contextlib.suppress(ServiceError):
        await api.close_episode(episode_id)


async def _world_ids(api: CrmApiClient) -> dict[str, set[str]]:
    """Ids of the world template's records (an episode without seed)."""
    episode_id, _ = await _open(api, {}, "sales_rep")
    try:
        tables: Tables = (await api.episode_state(episode_id))["tables"]
    finally:
        await _close(api, episode_id)
    return {t: {str(r[_pk(t)]) for r in tables.get(t, [])} for t in TABLES}


@dataclass
class _Attempt:
    """One replay of the draft's actions in a fresh episode."""

    outcomes: list[StepOutcome]
    calls: list[dict[str, Any]]
    initial: Tables
    final: Tables
    pins: dict[tuple[int, str], tuple[Any, str]]
    """References to re-point, found while the episode was alive: value and reason."""

    @property
    def results(self) -> list[Any]:
        return [o.body if o.ok else None for o in self.outcomes]

    def changes(self) -> list[tuple[int, dict[str, Any]]]:
        """(step number, change entry) in log order."""
        entries: list[tuple[int, dict[str, Any]]] = []
        for call in self.calls:
            call_id = str(call.get("tool_call_id") or "")
            step = int(call_id.split("-")[-1]) if call_id.startswith("step-") else 0
            entries.extend((step, change) for change in call["changes"])
        return entries

    def created(self) -> dict[str, tuple[str, int]]:
        """Ids of rows the replay inserted: id -> (table, step)."""
        return {
            str(change["key"]): (change["table"], step)
            for step, change in self.changes()
            if change["op"] == "INSERT"
        }


def _initial_tables(final: Tables, changes: Sequence[tuple[int, dict[str, Any]]]) -> Tables:
    """The state before the replay: the final state with the change log undone."""
    index = {t: {str(r[_pk(t)]): r for r in rows} for t, rows in final.items()}
    for _, change in reversed(changes):
        rows = index.setdefault(change["table"], {})
        key = str(change["key"])
        if change["op"] == "INSERT":
            rows.pop(key, None)
        else:
            rows[key] = change["before"]
    return {t: sorted(rows.values(), key=lambda r: str(r[_pk(t)])) for t, rows in index.items()}


async def _attempt(api: CrmApiClient, draft: _Draft, world_ids: Mapping[str, set[str]]) -> _Attempt:
    episode_id, token = await _open(api, draft.seed, draft.role)
    try:
        outcomes = await replay(api, token, draft.actions(), strict=False)
        calls: list[dict[str, Any]] = (await api.episode_changes(episode_id))["tool_calls"]
        final: Tables = (await api.episode_state(episode_id))["tables"]
        attempt = _Attempt(outcomes, calls, {}, final, {})
        attempt.initial = _initial_tables(final, attempt.changes())
        attempt.pins = await _world_first_references(api, token, draft, attempt, world_ids)
        return attempt
    finally:
        await _close(api, episode_id)


async def _world_first_references(
    api: CrmApiClient,
    token: str,
    draft: _Draft,
    attempt: _Attempt,
    world_ids: Mapping[str, set[str]],
) -> dict[tuple[int, str], tuple[Any, str]]:
    """References to a search's first result that, in our larger world, is a world record
    while the conversation's own records match too: those are re-pointed at the first of
    the conversation's own matches (what the search returned in the customer's CRM)."""
    pins: dict[tuple[int, str], tuple[Any, str]] = {}
    created = attempt.created()
    users = [(step.turn_id, draft.pinned(step.args)) for step in draft.steps]
    users += [
        (t.turn_id, draft.pinned(text))
        for t, text in zip(draft.conversation.turns, draft.texts, strict=True)
    ]
    for turn_id, value in users:
        for text in _strings(value):
            for match in _STEP_REF.finditer(text):
                number, path = int(match.group(1)), match.group(2)
                if (number, path) in pins or number > len(attempt.outcomes):
                    continue
                source = attempt.outcomes[number - 1]
                table = RESULT_TABLE.get(source.tool)
                body = source.body if source.ok else None
                if not table or not isinstance(body, dict) or not body.get("items"):
                    continue
                if path.split(".")[0] in body:
                    continue  # an explicit path (items.0.x) says what it means
                first = body["items"][0]
                if str(first.get(_pk(table))) not in world_ids[table]:
                    continue
                later = {key for key, (_, made) in created.items() if made >= number}
                own = await _first_own_match(api, token, source, table, world_ids, later)
                if own is None:
                    continue
                try:
                    value = resolve(f"{{{{step_1.{path}}}}}", [{"items": [own]}])
                except ReplayError:
                    continue
                pins[(number, path)] = (
                    value,
                    f"turn {turn_id} uses the first result of turn "
                    f"{draft.steps[number - 1].turn_id}'s {source.tool}; here that is a record "
                    f"of the larger world, so it is pinned to the conversation's own {table} "
                    f"{own.get(_pk(table))}",
                )
    return pins


async def _first_own_match(
    api: CrmApiClient,
    token: str,
    source: StepOutcome,
    table: str,
    world_ids: Mapping[str, set[str]],
    exclude: set[str],
) -> dict[str, Any] | None:
    offset = 0
    for _ in range(MAX_SEARCH_PAGES):
        args = {**source.args, "limit": 50, "offset": offset}
        answer = await api.call_tool(token, source.tool, args)
        if answer.status != 200:
            return None
        page = answer.body
        for item in page["items"]:
            key = str(item.get(_pk(table)))
            if key not in world_ids[table] and key not in exclude:
                return dict(item)
        if not page.get("has_more"):
            return None
        offset += 50
    return None


def _review(draft: _Draft, attempt: _Attempt) -> bool:
    """Repairs what the replay showed; True when the draft changed and must be replayed."""
    changed = False
    for (number, path), (value, reason) in attempt.pins.items():
        if (number, path) not in draft.pins:
            draft.pins[(number, path)] = value
            draft.repair(reason)
            changed = True
    if changed:
        return True  # later failures may follow from the re-pointed references
    for index, (step, outcome) in enumerate(zip(draft.steps, attempt.outcomes, strict=True)):
        number = index + 1
        if outcome.status == 0:
            raise Unimportable(f"turn {step.turn_id} ({step.tool}): {outcome.body}")
        error = outcome.body.get("error", {}) if isinstance(outcome.body, dict) else {}
        code = outcome.error_code
        if outcome.ok and step.expects_failure:
            draft.repair(
                f"turn {step.turn_id} ({step.tool}) is expected to fail"
                + (f" ({step.expect_error})" if step.expect_error else "")
                + " but the CRM API accepts it; imported as a successful call",
                inconsistent=True,
            )
            step.expects_failure, step.expect_error = False, None
            return True
        if outcome.ok:
            continue
        if step.expects_failure:
            if step.expect_error is None:
                step.expect_error = code
                draft.note(f"turn {step.turn_id}: refusal code {code} taken from the CRM API")
                return True
            if step.expect_error != code:
                draft.repair(
                    f"turn {step.turn_id} ({step.tool}) expects {step.expect_error} but the CRM "
                    f"API refuses with {code}; expecting {code}",
                    inconsistent=True,
                )
                step.expect_error = code
                return True
            continue
        if code == "PERMISSION_DENIED" and draft.role == "sales_rep":
            draft.role = "manager"
            draft.repair(f"turn {step.turn_id} ({step.tool}) needs a manager; actor is a manager")
            return True
        if code in DECIDABLE_FIXES and _fix_enum(draft, step, error):
            return True
        if _later_references(draft, number):
            raise Unimportable(
                f"turn {step.turn_id} ({step.tool}) fails on the CRM API ({code}: "
                f"{error.get('message')}) and later turns use its result"
            )
        step.expects_failure, step.expect_error = True, code
        draft.repair(
            f"turn {step.turn_id} ({step.tool}) fails on the CRM API ({code}: "
            f"{error.get('message')}); imported as an expected refusal",
            inconsistent=True,
        )
        return True
    return False


def _fix_enum(draft: _Draft, step: _Step, error: Mapping[str, Any]) -> bool:
    """An enum value off by case or spaces, when the refusal names the allowed values."""
    name, allowed = error.get("field"), error.get("allowed")
    if not isinstance(name, str) or not isinstance(allowed, list):
        return False
    name = name.split(".")[-1]
    holder = step.args.get("criteria") if name not in step.args else step.args
    if not isinstance(holder, dict) or not isinstance(holder.get(name), str):
        return False
    wanted = holder[name].strip().casefold()
    matches = [a for a in allowed if isinstance(a, str) and a.casefold() == wanted]
    if len(matches) != 1:
        return False
    old, holder[name] = holder[name], matches[0]
    draft.repair(
        f"turn {step.turn_id}: {name} {old!r} is not an allowed value; used {matches[0]!r}",
        inconsistent=True,
    )
    return True


def _later_references(draft: _Draft, number: int) -> bool:
    for step in draft.steps[number:]:
        for text in _strings(draft.pinned(step.args)):
            if any(int(m.group(1)) == number for m in _STEP_REF.finditer(text)):
                return True
    for position, text in enumerate(draft.texts):
        own = draft.step_of_turn[position]
        if (
            own is not None
            and own > number
            and any(int(m.group(1)) == number for m in _STEP_REF.finditer(text))
        ):
            return True
    return False


# ---------------------------------------------------------------------------- expectations


def assertion_holds(assertion: StateAssertion, tables: Tables) -> bool:
    """Whether one state assertion holds in `tables`, by the verifier's rules (one that
    cannot be evaluated, e.g. an unresolvable $ref, does not)."""
    return expectations.assertion_holds(assertion, FinalState(tables))


def collateral(
    allowed: Sequence[AllowedChange], calls: Sequence[Mapping[str, Any]], final: Tables
) -> list[str]:
    """Change-log entries (the CRM API's tool_calls) no allowed-change rule takes, by the
    verifier's attribution rules, as "op table key"."""
    changes = [
        LoggedChange(
            call.get("tool_call_id"),
            call.get("tool"),
            change.get("seq"),
            change["table"],
            change["op"],
            str(change["key"]),
            change.get("before"),
            change.get("after"),
        )
        for call in calls
        for change in call["changes"]
    ]
    found = expectations.find_collateral(allowed, changes, FinalState(final))
    return [f"{change.op} {change.table} {change.key}" for change in found]


def fact_holds(fact: CommunicationFact, reply: str, final: Tables | None = None) -> bool:
    """Whether the reply gives a mentions or mentions_value fact (its ref resolved in
    `final`), by the verifier's rules; a judge fact or a defective one does not hold."""
    if fact.kind == "judge":
        return False
    try:
        return expectations.fact_found(fact, reply, FinalState(final or {})) is not None
    except Unresolvable:
        return False


@dataclass
class _History:
    table: str
    key: str
    entries: list[tuple[int, dict[str, Any]]]

    @property
    def created(self) -> bool:
        return bool(self.entries[0][1]["op"] == "INSERT")

    @property
    def deleted(self) -> bool:
        return bool(self.entries[-1][1]["op"] == "DELETE")

    def versions(self) -> list[Row]:
        rows: list[Row] = []
        for _, change in self.entries:
            rows.extend(r for r in (change["before"], change["after"]) if r is not None)
        return rows

    def updated_fields(self) -> list[str]:
        fields: list[str] = []
        for _, change in self.entries:
            if change["op"] == "UPDATE":
                before, after = change["before"], change["after"]
                fields += [k for k in after if before.get(k) != after.get(k) and k not in fields]
        return fields


class _Expectations:
    """State assertions and allowed changes read from one replay."""

    def __init__(self, draft: _Draft, attempt: _Attempt) -> None:
        self.draft = draft
        self.attempt = attempt
        self.final = attempt.final
        self.initial = attempt.initial
        self.final_index = {t: {str(r[_pk(t)]): r for r in rows} for t, rows in self.final.items()}
        self.histories: dict[tuple[str, str], _History] = {}
        for step, change in attempt.changes():
            key = (change["table"], str(change["key"]))
            self.histories.setdefault(key, _History(key[0], key[1], [])).entries.append(
                (step, change)
            )
        self.created = {h.key: h for h in self.histories.values() if h.created}
        self._refs: dict[str, dict[str, Any]] = {}

    def business_fields(self, table: str, row: Mapping[str, Any]) -> list[str]:
        return [
            k
            for k, v in row.items()
            if k != _pk(table) and k not in TIMESTAMP_FIELDS | ACTOR_FIELDS and v is not None
        ]

    def supplied_fields(self, history: _History) -> list[str]:
        """Columns of the row that the creating call's arguments gave."""
        step = history.entries[0][0]
        args = self.attempt.outcomes[step - 1].args if step else {}
        row = history.entries[0][1]["after"]
        return [k for k in args if k in row and k != _pk(history.table)]

    def value(self, name: str, value: Any, row: Mapping[str, Any]) -> Any:
        """A row value as an expectation: a reference when it names a created record."""
        if isinstance(value, str) and value in self.created:
            target = self.created[value]
            if name.endswith("_id") or name == "entity_id":
                return {
                    "$ref": {
                        "table": target.table,
                        "where": self.ref_key(target),
                        "field": _pk(target.table),
                    }
                }
        return _plain(value)

    def stable(self, history: _History, name: str) -> bool:
        versions = history.versions()
        return all(equal(_plain(v.get(name)), _plain(versions[0].get(name))) for v in versions)

    def ref_key(self, history: _History) -> dict[str, Any]:
        """A where naming exactly one row in the final state: the created record."""
        if history.key in self._refs:
            return self._refs[history.key]
        table = history.table
        row = self.final_index.get(table, {}).get(history.key)
        if row is None:
            raise Unimportable(f"a later call refers to {table} {history.key}, which is deleted")
        fields = [f for f in self.supplied_fields(history) if self.stable(history, f)]
        if not fields:
            fields = [f for f in self.business_fields(table, row) if self.stable(history, f)]
        key = {f: self.value(f, row[f], row) for f in fields}
        others = [str(m[_pk(table)]) for m in select(table, key, FinalState(self.final))]
        others = [other for other in others if other != history.key]
        existing = [other for other in others if other not in self.created]
        if existing:  # records that were there before: exclude them by id
            key[_pk(table)] = {"$ne": existing[0] if len(existing) == 1 else {"$in": existing}}
        if len(existing) < len(others):  # another record the conversation made: more fields
            key.update({f: self.value(f, row[f], row) for f in self.business_fields(table, row)})
            if len(select(table, key, FinalState(self.final))) != 1:
                raise Unimportable(f"two {table} records made by the conversation look alike")
        self._refs[history.key] = key
        return key

    def allow_key(self, history: _History) -> dict[str, Any]:
        """A where that every version of the created row matches (each log entry is
        matched against its own row), narrowed like ref_key where the fields allow."""
        if history.deleted:
            first = history.versions()[0]
            fields = [f for f in self.supplied_fields(history) if self.stable(history, f)]
            return {f: self.value(f, first[f], first) for f in fields}
        key = self.ref_key(history)
        return {f: v for f, v in key.items() if f == _pk(history.table) or self.stable(history, f)}

    def build(self) -> tuple[list[StateAssertion], list[AllowedChange]]:
        assertions: list[StateAssertion] = []
        allowed: list[AllowedChange] = []
        ordered = sorted(self.histories.values(), key=lambda h: h.entries[0][1]["seq"])
        for history in ordered:
            table, key = history.table, history.key
            ops = list(dict.fromkeys(change["op"] for _, change in history.entries))
            turn = self.draft.steps[history.entries[0][0] - 1].turn_id
            if history.created:
                allowed.append(
                    AllowedChange(
                        table=table,
                        ops=ops,
                        where=self.allow_key(history),  # type: ignore[arg-type]
                        fields=self.rule_fields(history, ops),
                        max_rows=1,
                    )
                )
                if history.deleted:
                    continue
                assertions.append(self._created_assertion(history, turn))
                continue
            allowed.append(
                AllowedChange(
                    table=table,
                    ops=ops,
                    where={_pk(table): key},  # type: ignore[arg-type]
                    fields=self.rule_fields(history, ops),
                    max_rows=1,
                )
            )
            if history.deleted:
                assertions.append(
                    StateAssertion(
                        kind="row_absent",
                        table=table,
                        where={_pk(table): key},  # type: ignore[arg-type]
                        description=f"{table} {key} is deleted (turn {turn})",
                    )
                )
                continue
            before = history.entries[0][1]["before"]
            after = self.final_index[table][key]
            for name in history.updated_fields():
                if equal(_plain(before.get(name)), _plain(after.get(name))):
                    continue
                assertions.append(
                    StateAssertion(
                        kind="field_equals",
                        table=table,
                        where={_pk(table): key},  # type: ignore[arg-type]
                        field=name,
                        value=self.value(name, after.get(name), after),
                        description=f"{table} {key} has {name} "
                        f"{_text(after.get(name))} (turn {turn})",
                    )
                )
        return assertions, allowed

    def rule_fields(self, history: _History, ops: Sequence[str]) -> list[str] | None:
        return sorted(history.updated_fields()) if "UPDATE" in ops else None

    def _created_assertion(self, history: _History, turn: int) -> StateAssertion:
        table = history.table
        row = self.final_index[table][history.key]
        fields = self.supplied_fields(history)
        fields += [f for f in history.updated_fields() if f not in fields]
        if not fields:
            fields = self.business_fields(table, row)
        where = {f: self.value(f, row[f], row) for f in fields}
        try:
            before = [str(r[_pk(table)]) for r in select(table, where, FinalState(self.initial))]
        except Unresolvable:
            before = []  # it names a record made by the conversation: none existed before
        if before:
            where[_pk(table)] = {"$ne": before[0] if len(before) == 1 else {"$in": before}}
        name = _display_name(table, row)
        label = f" {name!r}" if name else ""
        return StateAssertion(
            kind="row_exists",
            table=table,  # type: ignore[arg-type]
            where=where,
            description=f"the new {table}{label} exists with the given fields (turn {turn})",
        )


def _reads_facts(draft: _Draft, attempt: _Attempt) -> list[CommunicationFact]:
    """What the reply must say when the conversation only reads: what its calls found."""
    facts: list[CommunicationFact] = []
    seen: set[tuple[str, ...]] = set()

    def add(fact: str, phrases: Sequence[str]) -> None:
        phrases = [p for p in dict.fromkeys(phrases) if p]
        key = tuple(sorted(phrases))
        if phrases and key not in seen:
            seen.add(key)
            facts.append(CommunicationFact(kind="mentions", fact=fact, any_of=list(phrases)))

    for step, outcome in zip(draft.steps, attempt.outcomes, strict=True):
        body = outcome.body
        if not outcome.ok or not isinstance(body, dict):
            continue
        table = RESULT_TABLE.get(step.tool)
        if table is not None and isinstance(body.get("items"), list):
            if body.get("total") == 0:
                plural = PLURALS.get(table, table + "s")
                phrases = [*NO_MATCH_PHRASES, f"no {plural}", f"0 {plural}"]
                add(f"says that nothing matches turn {step.turn_id}'s search", phrases)
                continue
            names = [
                _display_name(table, item) or str(item.get(_pk(table))) for item in body["items"]
            ]
            add(f"names what turn {step.turn_id}'s search found", names)
        elif step.tool in ("view_opportunity_details", "opportunity_details"):
            add(f"names the opportunity (turn {step.turn_id})", [str(body.get("name"))])
            add(f"gives its stage (turn {step.turn_id})", [str(body.get("stage"))])
        elif step.tool == "quote_details":
            add(f"gives the quote's status (turn {step.turn_id})", [str(body.get("status"))])
            add(
                f"gives the quote's amount (turn {step.turn_id})",
                _number_forms(float(body.get("amount") or 0)),
            )
    return facts


def _refusal_facts(draft: _Draft, attempt: _Attempt) -> list[CommunicationFact]:
    facts = []
    for step, outcome in zip(draft.steps, attempt.outcomes, strict=True):
        if outcome.ok or not step.expect_error or step.expect_error == "NO_CHANGES":
            continue
        code = step.expect_error
        phrases = [code.replace("_", " ").lower(), code]
        if step.error_substring:
            phrases.append(step.error_substring)
        facts.append(
            CommunicationFact(
                kind="mentions",
                fact=f"explains that turn {step.turn_id}'s request is refused ({code})",
                any_of=phrases,
            )
        )
    return facts


def _reference_reply(
    assertions: Sequence[StateAssertion], facts: Sequence[CommunicationFact]
) -> str:
    lines = []
    if assertions:
        lines.append("Done. " + " ".join(_sentence(a.description) for a in assertions))
    for fact in facts:
        lines.append(_sentence(f"{fact.fact}: {fact.any_of[0]}"))
    return "\n".join(lines) or "Done."


def _outcomes(assertions: Sequence[StateAssertion], refusals: bool) -> list[Outcome]:
    """The outcomes an imported conversation's final reply may claim: completed; when a
    turn's request is refused, a refusal (or a question) too, since the turns that did
    work and the refused one compete for the reply's last word. A conversation that only
    refuses (no state assertion) may not claim completion."""
    if not refusals:
        return [Outcome.COMPLETED]
    refusing = [Outcome.REFUSED, Outcome.NEEDS_CLARIFICATION]
    return [Outcome.COMPLETED, *refusing] if assertions else refusing


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


def _failure_spec(draft: _Draft) -> FailureSpec | None:
    for index, step in enumerate(draft.steps):
        if step.expect_error not in FAILURE_CATEGORIES:
            continue
        code = step.expect_error
        assert code is not None
        retried = any(
            later.tool == step.tool and not later.expects_failure
            for later in draft.steps[index + 1 :]
        )
        naive = Action(tool=step.tool, args=draft.pinned(step.args))
        return FailureSpec(
            category=code,
            family=FAILURE_CATEGORIES[code],
            severity=Severity.MEDIUM,
            trap=Trap(
                description=f"turn {step.turn_id} asks for a {step.tool} call the CRM API "
                f"refuses with {code} (from the customer's CL-Bench data)",
                right_behaviour="recover" if retried else "refuse_and_explain",
                naive_actions=[naive],
                naive_reply="Done, it is saved.",
            ),
        )
    return None


# ---------------------------------------------------------------------------- turn texts


def _render_turns(draft: _Draft, attempt: _Attempt, created: Mapping[str, Any]) -> list[str]:
    """Turn texts with references resolved and the values the reference uses spelled out."""
    results = attempt.results
    names: dict[str, str | None] = {}
    for table in TABLES:
        for row in attempt.final.get(table, []) + attempt.initial.get(table, []):
            names.setdefault(str(row[_pk(table)]), _display_name(table, row))

    def describe(value: Any) -> str:
        if isinstance(value, str) and value in created:
            name = names.get(value)
            return (
                f'"{name}" (the one you created earlier)'
                if name
                else "(the one you created earlier)"
            )
        return _text(value)

    def reference_value(match: re.Match[str]) -> Any:
        key = (int(match.group(1)), match.group(2))
        if key in draft.pins:
            return draft.pins[key]
        try:
            return resolve(match.group(0), results)
        except ReplayError as exc:
            raise Unimportable(f"a turn text cannot be resolved: {exc}") from None

    texts = []
    for position, raw in enumerate(draft.texts):
        used = [reference_value(match) for match in _STEP_REF.finditer(raw)]
        text = _STEP_REF.sub(lambda match: describe(reference_value(match)), raw)
        step_no = draft.step_of_turn[position]
        if step_no is not None:
            args = attempt.outcomes[step_no - 1].args
            details = []
            for key, value in _flat_args(args).items():
                if value is None or value in used or _mentioned(text, value):
                    continue
                target = _table_of_key(key, _flat_args(args))
                if target and isinstance(value, str):
                    name = names.get(value)
                    shown = (
                        describe(value)
                        if value in created
                        else f"{name} ({value})"
                        if name
                        else value
                    )
                    details.append(f"{target}: {shown}")
                else:
                    details.append(f"{key.replace('_', ' ')}: {_text(value)}")
            if details:
                text = text.rstrip().rstrip(".") + " — " + "; ".join(details) + "."
                draft.note(
                    f"turn {draft.conversation.turns[position].turn_id}: text completed "
                    f"with {len(details)} argument value(s) it did not state"
                )
        texts.append(text)
    return texts


# ---------------------------------------------------------------------------- one conversation


async def _import_one(
    api: CrmApiClient,
    conversation: ClConversation,
    world_ids: Mapping[str, set[str]],
    tools: Mapping[str, ToolFields],
) -> tuple[Case, _Draft]:
    draft = _draft(conversation, world_ids, tools)
    attempt = await _attempt(api, draft, world_ids)
    for _ in range(MAX_ATTEMPTS):
        if not _review(draft, attempt):
            break
        attempt = await _attempt(api, draft, world_ids)
    else:
        raise Unimportable(f"the replay did not settle after {MAX_ATTEMPTS} repairs")

    expectations = _Expectations(draft, attempt)
    assertions, allowed = expectations.build()
    facts = _refusal_facts(draft, attempt)
    refusals = bool(facts)
    if not assertions:
        facts = _reads_facts(draft, attempt) + facts
    if not assertions and not facts:
        raise Unimportable("the conversation changes nothing and finds nothing to report")
    reply = _reference_reply(assertions, facts)
    turns = _render_turns(draft, attempt, expectations.created)

    tags = [TAG, f"clbench:{conversation.conversation_id}"]
    if draft.inconsistent:
        tags.append(INCONSISTENT_TAG)
    if draft.repairs:
        tags.append("clbench:repaired")
    tags += [f"clbench:default:{key}" for key in draft.filled]
    first_tool = draft.steps[0].tool
    case = Case(
        case_id=draft.case_id,
        task_category=_task_category(conversation, first_tool),
        workflow=(conversation.workflow_category or "General").strip() or "General",
        difficulty=_difficulty(conversation, draft),
        split=Split.EVAL,
        tags=tags,
        today=TODAY,
        actor=Actor(name=ACTOR_NAME, role=draft.role),  # type: ignore[arg-type]
        seed={t: rows for t, rows in draft.seed.items() if rows},  # type: ignore[misc]
        turns=[Turn(content=text) for text in turns],
        expected=Expected(
            state=assertions,
            allowed_changes=allowed,
            communicate=facts,
            reference_actions=draft.actions(),
            reference_reply=reply,
            outcomes=_outcomes(assertions, refusals),
        ),
        failure=_failure_spec(draft),
    )
    problems = self_check(case, attempt.initial, attempt.final, attempt.calls)
    if problems:
        raise Unimportable("the imported case fails its own check: " + "; ".join(problems))
    return case, draft


def self_check(
    case: Case, initial: Tables, final: Tables, calls: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The reference passes (assertions hold, no collateral, reply has every fact) and doing
    nothing does not (its score stays under the pass mark of 0.9)."""
    expected = case.expected
    problems = [
        f"assertion fails: {a.description}" for a in expected.state if not assertion_holds(a, final)
    ]
    problems += [
        f"collateral change: {c}" for c in collateral(expected.allowed_changes, calls, final)
    ]
    problems += [
        f"reference reply lacks: {f.fact}"
        for f in expected.communicate
        if not fact_holds(f, expected.reference_reply, final)
    ]
    weights = [a.weight for a in expected.state] + [1.0] + [f.weight for f in expected.communicate]
    held = [a.weight for a in expected.state if assertion_holds(a, initial)] + [1.0]
    if sum(held) / sum(weights) >= 0.9:
        problems.append("doing nothing would pass")
    return problems


# ---------------------------------------------------------------------------- files


def read_conversations(text: str) -> list[tuple[int, ClConversation | str]]:
    """(line number, conversation or why the line is not one) for every non-blank line."""
    items: list[tuple[int, ClConversation | str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((number, ClConversation.model_validate_json(line)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            items.append((number, f"not a CL-Bench conversation: {where}: {first['msg']}"))
    return items


def _conversation_id_of(raw: str) -> str:
    try:
        value = json.loads(raw).get("conversation_id")
        return str(value) if value else "?"
    except (ValueError, AttributeError):
        return "?"


async def import_conversations(
    items: Sequence[tuple[int, ClConversation | str]],
    api: CrmApiClient,
    *,
    source: str,
    raw_lines: Mapping[int, str] | None = None,
) -> ImportResult:
    """Imports every conversation; each ends up in the report, imported or not.

    `api` needs the admin key. The tools' fields come from the CRM API's OpenAPI document."""
    world_ids = await _world_ids(api)
    tools = tool_fields(await api.openapi())
    cases: list[Case] = []
    entries: list[ImportEntry] = []
    seen: dict[str, int] = {}
    for number, item in items:
        if isinstance(item, str):
            conversation_id = _conversation_id_of((raw_lines or {}).get(number, ""))
            entries.append(ImportEntry(number, conversation_id, ImportStatus.NOT_IMPORTED, item))
            continue
        conversation_id = item.conversation_id
        if conversation_id in seen:
            entries.append(
                ImportEntry(
                    number,
                    conversation_id,
                    ImportStatus.NOT_IMPORTED,
                    f"duplicate conversation_id (first on line {seen[conversation_id]})",
                )
            )
            continue
        seen[conversation_id] = number
        try:
            case, draft = await _import_one(api, item, world_ids, tools)
        except (Unimportable, ServiceFailed, InvalidResponse) as exc:
            # A server error on one conversation's calls is that conversation's problem;
            # only an unreachable CRM API (ServiceUnavailable) stops the whole import.
            entries.append(
                ImportEntry(number, conversation_id, ImportStatus.NOT_IMPORTED, str(exc))
            )
            continue
        status = ImportStatus.REPAIRED if draft.repairs else ImportStatus.IMPORTED
        summary = (
            f"{len(draft.repairs)} repair(s): "
            + draft.repairs[0]
            + (" …" if len(draft.repairs) > 1 else "")
            if draft.repairs
            else f"{len(case.turns)} turn(s), {len(case.expected.state)} state check(s), "
            f"{len(case.expected.communicate)} fact(s)"
        )
        entries.append(
            ImportEntry(
                number,
                conversation_id,
                status,
                summary,
                case.case_id,
                list(draft.repairs),
                list(draft.notes),
            )
        )
        cases.append(case)
    return ImportResult(source=source, cases=cases, entries=entries)


async def import_clbench(path: Path, base_url: str, admin_key: str) -> ImportResult:
    """Imports a CL-Bench JSONL file, replaying against the CRM API at `base_url`."""
    text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    raw = dict(enumerate(text.splitlines(), start=1))
    items = read_conversations(text)
    async with CrmApiClient(base_url, admin_key, timeout=120) as api:
        return await import_conversations(items, api, source=str(path), raw_lines=raw)


def import_file(path: Path, base_url: str, admin_key: str) -> ImportResult:
    """The synchronous form of `import_clbench`, for the command line."""
    return asyncio.run(import_clbench(path, base_url, admin_key))
