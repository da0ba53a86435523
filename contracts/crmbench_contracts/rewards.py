"""The verifier's reward record: a score, verdicts at thresholds, and why."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

PASS_THRESHOLD = 0.9
REPORTED_THRESHOLDS = (0.7, 0.8, 0.9)


def threshold_key(threshold: float) -> str:
    """The key of a threshold in `RewardRecord.verdicts`, traces and reports: 0.7 -> "0.7"."""
    return f"{threshold:g}"


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
