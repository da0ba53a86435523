"""The golden case: one task a CRM user gives an agent, with what must hold at the end."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EntityTable = Literal[
    "client", "company", "contact", "opportunity", "quote", "contract", "document", "note"
]
ChangeOp = Literal["INSERT", "UPDATE", "DELETE"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Difficulty(StrEnum):
    SIMPLE = "simple"
    MEDIUM = "medium"
    COMPLEX = "complex"


class Split(StrEnum):
    SEED = "seed"
    EVAL = "eval"
    HOLDOUT = "holdout"


class Severity(StrEnum):
    CRITICAL = "CRITICAL"
    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class FailureFamily(StrEnum):
    SCHEMA = "schema"
    DOMAIN_VALUES = "domain values"
    RELATIONS = "relations"
    STRINGS = "strings"
    WORKFLOW = "workflow"


FAILURE_CATEGORIES: dict[str, FailureFamily] = {
    "INVALID_ENUM": FailureFamily.SCHEMA,
    "ENUM_CASE_MISMATCH": FailureFamily.SCHEMA,
    "ENUM_WHITESPACE": FailureFamily.SCHEMA,
    "MISSING_REQUIRED_FIELD": FailureFamily.SCHEMA,
    "EXTRA_FIELD": FailureFamily.SCHEMA,
    "TYPE_MISMATCH": FailureFamily.SCHEMA,
    "NEGATIVE_AMOUNT": FailureFamily.DOMAIN_VALUES,
    "ZERO_AMOUNT": FailureFamily.DOMAIN_VALUES,
    "AMOUNT_EXCEEDS_MAX": FailureFamily.DOMAIN_VALUES,
    "PROBABILITY_OUT_OF_RANGE": FailureFamily.DOMAIN_VALUES,
    "PROBABILITY_DECIMAL": FailureFamily.DOMAIN_VALUES,
    "PAST_DATE": FailureFamily.DOMAIN_VALUES,
    "INVALID_DATE_FORMAT": FailureFamily.DOMAIN_VALUES,
    "UNKNOWN_FOREIGN_KEY": FailureFamily.RELATIONS,
    "DUPLICATE_UNIQUE_FIELD": FailureFamily.RELATIONS,
    "CROSS_ENTITY_MISMATCH": FailureFamily.RELATIONS,
    "BLANK_STRING": FailureFamily.STRINGS,
    "MALFORMED_EMAIL": FailureFamily.STRINGS,
    "UNSAFE_FILENAME": FailureFamily.STRINGS,
    "UNSUPPORTED_FILE_EXTENSION": FailureFamily.STRINGS,
    "MISSING_FILE_EXTENSION": FailureFamily.STRINGS,
    "MODIFY_CLOSED_OPPORTUNITY": FailureFamily.WORKFLOW,
    "INVALID_STAGE_TRANSITION": FailureFamily.WORKFLOW,
    "UNKNOWN_FIELD_UPDATE": FailureFamily.WORKFLOW,
    "PERMISSION_DENIED": FailureFamily.WORKFLOW,
}


class Actor(Strict):
    name: str
    role: Literal["sales_rep", "manager"]


class Turn(Strict):
    role: Literal["user"] = "user"
    content: str


class RowRef(Strict):
    """A value read from the unique row of `table` matching `where` in the final state."""

    table: EntityTable
    where: dict[str, Any]
    field: str


class StateAssertion(Strict):
    """One check on the final state, written against business keys, not generated ids.

    Values in `where` (and `value`) may be {"$ref": RowRef} to name a row the agent made.
    """

    kind: Literal["row_exists", "row_absent", "field_equals", "count"]
    table: EntityTable
    where: dict[str, Any]
    field: str | None = None
    value: Any = None
    count: int | None = None
    weight: float = 1.0
    description: str = ""


class AllowedChange(Strict):
    """Changes of this shape are expected; any change matching no rule is collateral."""

    table: EntityTable
    ops: list[ChangeOp]
    where: dict[str, Any] = Field(default_factory=dict)
    fields: list[str] | None = None
    max_rows: int | None = None


class CommunicationFact(Strict):
    """A fact the final reply must contain: any of some phrases, or a value from the state."""

    kind: Literal["mentions", "mentions_value", "judge"]
    fact: str
    any_of: list[str] = Field(default_factory=list)
    ref: RowRef | None = None
    weight: float = 1.0


class Action(Strict):
    """One tool call; string arguments may hold {{step_N.path}} references to earlier results."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    expect_error: str | None = None


class Expected(Strict):
    state: list[StateAssertion]
    allowed_changes: list[AllowedChange]
    communicate: list[CommunicationFact]
    reference_actions: list[Action]
    reference_reply: str


class Trap(Strict):
    description: str
    right_behaviour: Literal["recover", "look_up_first", "refuse_and_explain", "ask_manager"]
    naive_actions: list[Action]
    naive_reply: str


class FailureSpec(Strict):
    category: str
    family: FailureFamily
    severity: Severity
    trap: Trap


class Case(Strict):
    case_id: str
    task_category: str
    workflow: str
    difficulty: Difficulty
    split: Split
    tags: list[str] = Field(default_factory=list)
    today: date
    actor: Actor
    seed: dict[EntityTable, list[dict[str, Any]]] = Field(default_factory=dict)
    turns: list[Turn]
    expected: Expected
    failure: FailureSpec | None = None

    @property
    def is_failure(self) -> bool:
        return self.failure is not None
