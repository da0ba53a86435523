"""The verifier's reward record: a score, verdicts at thresholds, and why."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, model_validator

from crmbench_contracts.cases import Outcome

PASS_THRESHOLD = 0.9
REPORTED_THRESHOLDS = (0.7, 0.8, 0.9)


def threshold_key(threshold: float) -> str:
    """The key of a threshold in `RewardRecord.verdicts`, traces and reports: 0.7 -> "0.7"."""
    return f"{threshold:g}"


class VerificationMode(StrEnum):
    """How the verifier read the episode's final reply.

    - `offline`: no LLM judge took part; the reply was read by the offline matchers
      (phrase and value matching today, the offline classifier to come).
    - `judges`: the LLM judges scored the reply and agreed (or no arbiter was configured).
    - `judges+arbiter`: the judges disagreed or were unsure, and the arbiter decided.
    """

    OFFLINE = "offline"
    JUDGES = "judges"
    JUDGES_ARBITER = "judges+arbiter"


def verification_mode(judged: bool, arbitrated: bool) -> VerificationMode:
    """The mode of a verification where judges did (`judged`) and the arbiter did
    (`arbitrated`) take part."""
    if arbitrated:
        return VerificationMode.JUDGES_ARBITER
    return VerificationMode.JUDGES if judged else VerificationMode.OFFLINE


class CheckResult(BaseModel):
    check_id: str
    kind: str
    passed: bool
    score: float = Field(ge=0, le=1)
    weight: float
    expected: Any = None
    actual: Any = None
    rationale: str


class CollateralChange(BaseModel):
    table: str
    op: str
    key: str
    tool_call_id: str | None
    reason: str


class JudgeScore(BaseModel):
    judge: str
    score: float = Field(ge=0, le=1)
    uncertainty: float = Field(ge=0, le=1)
    rationale: str
    outcome: Outcome | None = Field(
        default=None, description="The outcome the judge read the reply as claiming."
    )
    facts: dict[str, bool] = Field(
        default_factory=dict,
        description="Fact id (`fact_id(branch, index)`, e.g. `primary/0`) -> whether the "
        "reply conveys it, by meaning.",
    )


def fact_id(branch: str, index: int) -> str:
    """The id of communication fact `index` of branch `branch` in judges' verdicts."""
    return f"{branch}/{index}"


class OutcomeSource(StrEnum):
    """Who read the claimed outcome: the offline classifier, the judges, or the arbiter."""

    OFFLINE = "offline"
    JUDGES = "judges"
    ARBITER = "arbiter"


class BranchResult(BaseModel):
    """How one acceptable branch of the case scored."""

    name: str
    score: float = Field(ge=0, le=1)
    outcome_accepted: bool
    outcomes: list[Outcome]


class RewardRecord(BaseModel):
    case_id: str
    episode_id: str | None
    score: float = Field(ge=0, le=1)
    passed: bool
    verdicts: dict[str, bool]
    checks: list[CheckResult]
    collateral: list[CollateralChange]
    judges: list[JudgeScore] = Field(default_factory=list)
    arbiter: JudgeScore | None = None
    structured_score: float = Field(ge=0, le=1)
    claimed_outcome: Outcome | None = Field(
        default=None, description="The outcome the final reply claims (None in older records)."
    )
    outcome_source: OutcomeSource | None = None
    branch: str | None = Field(
        default=None, description="The branch whose checks are reported (the best-scoring)."
    )
    branches: list[BranchResult] = Field(default_factory=list)
    verification_mode: VerificationMode = Field(
        description="How the reply was read: `offline` (no judge), `judges`, or "
        "`judges+arbiter`. Records written before the field existed get the mode their "
        "`judges` and `arbiter` imply."
    )

    @model_validator(mode="before")
    @classmethod
    def _mode_of_older_records(cls, data: Any) -> Any:
        if isinstance(data, dict) and "verification_mode" not in data:
            mode = verification_mode(bool(data.get("judges")), data.get("arbiter") is not None)
            return {**data, "verification_mode": mode}
        return data
