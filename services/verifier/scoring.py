"""Structured scoring of one episode against its golden case: pure functions, no I/O.

`score_case(case, state, changes, final_reply)` returns a RewardRecord. What each
expectation means (value matching and operators, state assertions, allowed changes, reply
facts) is `crmbench_contracts.expectations`; this module turns them into checks. A defect
of the case (an expectation that cannot be evaluated) fails the check that holds it;
scoring never raises on a case.

State assertions (check ids "state[i]", weight from the assertion)
  One check per assertion.

Allowed changes (check id "collateral", weight 1.0)
  The change-log entries no rule takes are collateral damage; any collateral forces the
  structured score and the score to 0.

Communication facts (check ids "communicate[i]")
  mentions, mentions_value and reason: read offline by `expectations.read_fact`; when
  the judges give a verdict on the fact (JudgeOutcome.fact) the verdict decides, except
  that a reason fact is never earned by a reply the offline reader finds unspecific (it
  names more than replies.MAX_UNRELATED_REASONS unrelated reasons). judge: scored by the
  LLM judges only; without a judge outcome the fact is listed as kind "judge_skipped"
  with weight 0 and takes no part in the score.

Claimed outcome (check id "outcome", weight 0: a gate, not a weight; cases.md)
  The outcome the final reply claims is the judges' reading when they give one
  (JudgeOutcome.outcome: the arbiter's, else the judges' majority), else the offline
  classifier's (crmbench_contracts.replies.classify_outcome); `outcome_source` says
  which. A branch's gate fails when its outcomes do not include the claimed one, or when
  the reply claims `completed` while the episode changed nothing and the branch expects
  changes (it has allowed changes): success claimed, nothing done.

Branches
  Every branch of `case.expected.branches()` (the primary one, then the alternatives) is
  scored on its own checks; the record reports the best-scoring branch (the first on a
  tie) in `checks` and `branch`, and every branch's score in `branches`.

Score (per branch)
  structured_score is the weighted mean of the checks with weight > 0; 0 when the branch
  has nothing to check but collateral (a case must check something). With judges,
  score = (1 - judge_weight) * structured + judge_weight * judge value (the arbiter's
  score when it was called, else the judges' mean). Collateral or a failed outcome gate
  forces structured_score and score to 0 either way. Scores are rounded to 6 decimals;
  passed = score >= pass_threshold (0.9), and verdicts report 0.7, 0.8 and 0.9 with keys
  "0.7", "0.8", "0.9".

Verification mode
  `offline` when no judge scored the reply, `judges` when judges did, `judges+arbiter`
  when the arbiter decided (`crmbench_contracts.rewards.VerificationMode`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crmbench_contracts.cases import Branch, Case, CommunicationFact, Outcome, StateAssertion
from crmbench_contracts.expectations import (
    FinalState,
    LoggedChange,
    Unresolvable,
    changed_fields,
    evaluate_state,
    find_collateral,
    read_fact,
)
from crmbench_contracts.replies import classify_outcome, read_reason
from crmbench_contracts.rewards import (
    PASS_THRESHOLD,
    REPORTED_THRESHOLDS,
    BranchResult,
    CheckResult,
    CollateralChange,
    OutcomeSource,
    RewardRecord,
    fact_id,
    threshold_key,
    verification_mode,
)
from verifier.judges import JudgeOutcome
from verifier.schemas import ChangeLog, EpisodeState, parse_changes, parse_state

# ---------------------------------------------------------------------------- state


def check_state(index: int, assertion: StateAssertion, world: FinalState) -> CheckResult:
    """One state assertion as a CheckResult; never raises."""
    expected: dict[str, Any] = {"table": assertion.table, "where": assertion.where}
    if assertion.kind == "field_equals":
        expected |= {"field": assertion.field, "value": assertion.value}
    elif assertion.kind == "count":
        expected["count"] = assertion.count
    try:
        passed, actual, detail = evaluate_state(assertion, world)
    except Unresolvable as exc:
        passed, actual, detail = False, None, str(exc)
    return CheckResult(
        check_id=f"state[{index}]",
        kind=assertion.kind,
        passed=passed,
        score=1.0 if passed else 0.0,
        weight=assertion.weight,
        expected=expected,
        actual=actual,
        rationale=f"{assertion.description}: {detail}" if assertion.description else detail,
    )


# ---------------------------------------------------------------------------- changes


def flatten_changes(log: ChangeLog) -> list[LoggedChange]:
    return [
        LoggedChange(
            call.tool_call_id,
            call.tool,
            entry.seq,
            entry.table,
            entry.op,
            entry.key,
            entry.before,
            entry.after,
        )
        for call in log.tool_calls
        for entry in call.changes
    ]


def collateral_check(collateral: Sequence[CollateralChange], total: int) -> CheckResult:
    if not collateral:
        detail = f"all {total} change(s) are allowed" if total else "no changes were made"
    else:
        shown = "; ".join(f"{c.op} {c.table} {c.key} ({c.reason})" for c in collateral[:3]) + (
            "; ..." if len(collateral) > 3 else ""
        )
        detail = f"{len(collateral)} of {total} change(s) are collateral: {shown}"
    return CheckResult(
        check_id="collateral",
        kind="collateral",
        passed=not collateral,
        score=0.0 if collateral else 1.0,
        weight=1.0,
        expected="only changes covered by allowed_changes",
        actual={"changes": total, "collateral": len(collateral)},
        rationale=detail,
    )


def change_summary(log: ChangeLog) -> list[dict[str, Any]]:
    """A compact view of what an episode changed, for judges and reports."""
    summary = []
    for change in flatten_changes(log):
        item: dict[str, Any] = {
            "tool_call_id": change.tool_call_id,
            "tool": change.tool,
            "table": change.table,
            "op": change.op,
            "key": change.key,
        }
        if change.op == "UPDATE":
            before, after = change.before or {}, change.after or {}
            item["fields"] = {
                field: [before.get(field), after.get(field)]
                for field in changed_fields(before, after)
            }
        elif change.op == "INSERT":
            item["row"] = dict(change.after or {})
        summary.append(item)
    return summary


# ---------------------------------------------------------------------------- communication


def check_fact(
    index: int,
    fact: CommunicationFact,
    reply: str,
    world: FinalState,
    *,
    judge_value: float | None,
    pass_threshold: float,
    judged: bool | None = None,
) -> CheckResult:
    """One communication fact as a CheckResult; never raises. `judged` is the judges'
    verdict on the fact (None: they gave none, the offline reading decides)."""
    check_id = f"communicate[{index}]"
    if fact.kind == "judge":
        if judge_value is None:
            return CheckResult(
                check_id=check_id,
                kind="judge_skipped",
                passed=False,
                score=0.0,
                weight=0.0,
                expected=fact.fact,
                rationale=f"{fact.fact}: left to the LLM judges, and none were run",
            )
        return CheckResult(
            check_id=check_id,
            kind="judge",
            passed=judge_value >= pass_threshold,
            score=judge_value,
            weight=0.0,
            expected=fact.fact,
            actual=judge_value,
            rationale=f"{fact.fact}: scored by the LLM judges ({judge_value:.2f}), "
            "weighted through judge_weight",
        )
    try:
        reading = read_fact(fact, reply, world)
    except Unresolvable as exc:
        return CheckResult(
            check_id=check_id,
            kind=fact.kind,
            passed=False,
            score=0.0,
            weight=fact.weight,
            expected=fact.any_of if fact.kind == "mentions" else None,
            rationale=f"{fact.fact}: {exc}",
        )
    passed, detail = reading.found is not None, reading.detail
    if judged is not None:
        passed = judged
        detail = (
            f"the judges read it as {'conveyed' if judged else 'not conveyed'} (offline: {detail})"
        )
        if judged and fact.kind == "reason" and fact.rule is not None:
            offline = read_reason(reply, fact.rule, fact.any_of)
            if not offline.specific:
                passed = False
                detail = (
                    f"the judges read it as conveyed, but the reply names "
                    f"{len(offline.unrelated)} unrelated reasons: not specific"
                )
    return CheckResult(
        check_id=check_id,
        kind=fact.kind,
        passed=passed,
        score=1.0 if passed else 0.0,
        weight=fact.weight,
        expected=reading.expected,
        actual=reading.found,
        rationale=f"{fact.fact}: {detail}",
    )


# ---------------------------------------------------------------------------- outcome


@dataclass(frozen=True)
class ClaimedOutcome:
    """The outcome the reply claims, who read it, and the clauses that show it."""

    outcome: Outcome
    source: OutcomeSource
    evidence: list[str]


def claimed_outcome(reply: str, judges: JudgeOutcome | None) -> ClaimedOutcome:
    """The judges' reading of the claimed outcome when they give one, else the offline
    classifier's (crmbench_contracts.replies.classify_outcome)."""
    if judges is not None and judges.outcome is not None:
        by_arbiter = judges.arbiter is not None and judges.arbiter.outcome is not None
        return ClaimedOutcome(
            judges.outcome, OutcomeSource.ARBITER if by_arbiter else OutcomeSource.JUDGES, []
        )
    reading = classify_outcome(reply)
    return ClaimedOutcome(reading.outcome, OutcomeSource.OFFLINE, reading.evidence)


def outcome_check(
    branch: Branch, claimed: ClaimedOutcome, changes: Sequence[LoggedChange]
) -> CheckResult:
    """The outcome gate of one branch (module docstring); weight 0, it gates the score."""
    accepted = [outcome.value for outcome in branch.outcomes]
    by = {
        OutcomeSource.OFFLINE: "the offline classifier",
        OutcomeSource.JUDGES: "the judges",
        OutcomeSource.ARBITER: "the arbiter",
    }[claimed.source]
    shown = f" ({'; '.join(repr(e) for e in claimed.evidence[:2])})" if claimed.evidence else ""
    claim = f"the reply claims {claimed.outcome.value}, read by {by}{shown}"
    if claimed.outcome not in branch.outcomes:
        passed, detail = False, f"{claim}; this branch accepts {', '.join(accepted)}"
    elif claimed.outcome is Outcome.COMPLETED and branch.allowed_changes and not changes:
        passed, detail = False, f"{claim}, but the episode changed nothing"
    else:
        passed, detail = True, f"{claim}, which this branch accepts"
    return CheckResult(
        check_id="outcome",
        kind="outcome_gate",
        passed=passed,
        score=1.0 if passed else 0.0,
        weight=0.0,
        expected=accepted,
        actual=claimed.outcome.value,
        rationale=detail,
    )


# ---------------------------------------------------------------------------- score


@dataclass(frozen=True)
class _Scored:
    branch: Branch
    checks: list[CheckResult]
    collateral: list[CollateralChange]
    structured: float
    score: float
    outcome_accepted: bool


def _score_branch(
    branch: Branch,
    world: FinalState,
    logged: Sequence[LoggedChange],
    reply: str,
    claimed: ClaimedOutcome,
    judges: JudgeOutcome | None,
    judge_weight: float,
    pass_threshold: float,
) -> _Scored:
    judge_value = judges.value if judges is not None else None
    checks = [check_state(i, a, world) for i, a in enumerate(branch.state)]
    collateral = find_collateral(branch.allowed_changes, logged, world)
    checks.append(collateral_check(collateral, len(logged)))
    checks += [
        check_fact(
            i,
            fact,
            reply,
            world,
            judge_value=judge_value,
            pass_threshold=pass_threshold,
            judged=judges.fact(fact_id(branch.name, i)) if judges is not None else None,
        )
        for i, fact in enumerate(branch.communicate)
    ]
    gate = outcome_check(branch, claimed, logged)
    checks.append(gate)

    weighted = [check for check in checks if check.weight > 0]
    if not any(check.kind != "collateral" for check in weighted):
        checks.append(
            CheckResult(
                check_id="case",
                kind="no_checks",
                passed=False,
                score=0.0,
                weight=0.0,
                rationale="the branch has no weighted state or communication check, "
                "so doing nothing would pass: scored 0",
            )
        )
        structured = 0.0
    else:
        total = sum(check.weight for check in weighted)
        structured = sum(check.weight * check.score for check in weighted) / total
    blocked = bool(collateral) or not gate.passed
    if blocked:
        structured = 0.0
    score = structured
    if judge_value is not None:
        score = (1.0 - judge_weight) * structured + judge_weight * judge_value
    if blocked:
        score = 0.0
    return _Scored(branch, checks, collateral, _unit(structured), _unit(score), gate.passed)


def score_case(
    case: Case,
    state: Mapping[str, Any] | EpisodeState,
    changes: Mapping[str, Any] | ChangeLog,
    final_reply: str,
    *,
    episode_id: str | None = None,
    judges: JudgeOutcome | None = None,
    judge_weight: float = 0.2,
    pass_threshold: float = PASS_THRESHOLD,
) -> RewardRecord:
    """The reward record of one episode (rules in the module docstring).

    Raises InvalidEpisodeData (a ValueError) when `state` or `changes` do not have the
    CRM API's shape, and ValueError for a judge_weight outside [0, 1]; a defect in the
    case itself never raises, it fails the check that holds it.
    """
    if not 0.0 <= judge_weight <= 1.0:
        raise ValueError(f"judge_weight must be in [0, 1], got {judge_weight}")
    world = FinalState(parse_state(state).tables)
    logged = flatten_changes(parse_changes(changes))
    claimed = claimed_outcome(final_reply, judges)
    scored = [
        _score_branch(
            branch, world, logged, final_reply, claimed, judges, judge_weight, pass_threshold
        )
        for branch in case.expected.branches()
    ]
    best = max(scored, key=lambda s: s.score)  # max keeps the first of equal scores
    thresholds = sorted({*REPORTED_THRESHOLDS, pass_threshold})
    judged = judges is not None and judges.value is not None
    return RewardRecord(
        case_id=case.case_id,
        episode_id=episode_id,
        score=best.score,
        passed=best.score >= pass_threshold,
        verdicts={threshold_key(t): best.score >= t for t in thresholds},
        checks=best.checks,
        collateral=best.collateral,
        judges=list(judges.judges) if judges is not None else [],
        arbiter=judges.arbiter if judges is not None else None,
        structured_score=best.structured,
        claimed_outcome=claimed.outcome,
        outcome_source=claimed.source,
        branch=best.branch.name,
        branches=[
            BranchResult(
                name=s.branch.name,
                score=s.score,
                outcome_accepted=s.outcome_accepted,
                outcomes=list(s.branch.outcomes),
            )
            for s in scored
        ],
        verification_mode=verification_mode(
            judged, judges is not None and judges.arbiter is not None
        ),
    )


def _unit(value: float) -> float:
    """Clamped to [0, 1] and rounded, so 0.8999999999 from float sums reads as 0.9."""
    return round(min(1.0, max(0.0, value)), 6)
