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


class Outcome(StrEnum):
    """What a final reply may claim happened (cases.md, "outcomes").

    - `completed`: the request was carried out (for a read-only task: answered).
    - `refused`: it was not done, because of a named rule.
    - `needs_approval`: it was not done; a manager must approve or do it.
    - `needs_clarification`: it was not done yet; the agent asks the user a question.
    """

    COMPLETED = "completed"
    REFUSED = "refused"
    NEEDS_APPROVAL = "needs_approval"
    NEEDS_CLARIFICATION = "needs_clarification"


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
    """A fact the final reply must contain (matching rules: crmbench_contracts.expectations).

    - `mentions`: one of `any_of` appears; with `affirmed`, in a clause that does not
      negate it ("I did not move it to Proposal" does not confirm Proposal).
    - `mentions_value`: the value `ref` names in the final state appears.
    - `reason`: the reply gives the reason of failure category `rule` in words its
      offline lexicon knows (crmbench_contracts.replies.REASONS) or one of `any_of`, and,
      when `subject_any` is set, names one of those subjects too (the field, the file
      type). A reply that names the reasons of many unrelated rules earns no reason fact.
    - `judge`: left to the LLM judges.
    With judges configured, the judges decide every fact by meaning.
    """

    kind: Literal["mentions", "mentions_value", "reason", "judge"]
    fact: str
    any_of: list[str] = Field(default_factory=list)
    ref: RowRef | None = None
    rule: str | None = None
    subject_any: list[str] = Field(default_factory=list)
    affirmed: bool = False
    weight: float = 1.0


class Branch(Strict):
    """One acceptable way to end a case: the outcomes its reply may claim, and what must
    hold. A case passes when any of its branches does (cases.md, "outcomes")."""

    name: str
    outcomes: list[Outcome] = Field(min_length=1)
    state: list[StateAssertion]
    allowed_changes: list[AllowedChange]
    communicate: list[CommunicationFact]


class Action(Strict):
    """One tool call; string arguments may hold {{step_N.path}} references to earlier results."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    expect_error: str | None = None


class Expected(Strict):
    """What must hold at the end. The primary branch is `state`, `allowed_changes`,
    `communicate` and `outcomes` (the one the reference actions and reply take);
    `alternatives` are further acceptable branches."""

    state: list[StateAssertion]
    allowed_changes: list[AllowedChange]
    communicate: list[CommunicationFact]
    reference_actions: list[Action]
    reference_reply: str
    outcomes: list[Outcome] = Field(default_factory=lambda: [Outcome.COMPLETED], min_length=1)
    alternatives: list[Branch] = Field(default_factory=list)

    def branches(self) -> list[Branch]:
        """The primary branch (named "primary") followed by the alternatives."""
        primary = Branch(
            name="primary",
            outcomes=self.outcomes,
            state=self.state,
            allowed_changes=self.allowed_changes,
            communicate=self.communicate,
        )
        return [primary, *self.alternatives]


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
