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
  mentions and mentions_value: matched in the reply. judge: scored by the LLM judges
  only; without a judge outcome the fact is listed as kind "judge_skipped" with weight 0
  and takes no part in the score.

Score
  structured_score is the weighted mean of the checks with weight > 0; 0 when the case
  has nothing to check but collateral (a case must check something). With judges,
  score = (1 - judge_weight) * structured + judge_weight * judge value (the arbiter's
  score when it was called, else the judges' mean). Collateral forces 0 either way.
  Scores are rounded to 6 decimals; passed = score >= pass_threshold (0.9), and
  verdicts report 0.7, 0.8 and 0.9 with keys "0.7", "0.8", "0.9".

Verification mode
  `offline` when no judge scored the reply, `judges` when judges did, `judges+arbiter`
  when the arbiter decided (`crmbench_contracts.rewards.VerificationMode`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crmbench_contracts.cases import Case, CommunicationFact, StateAssertion
from crmbench_contracts.expectations import (
    FinalState,
    LoggedChange,
    Unresolvable,
    changed_fields,
    compact,
    evaluate_state,
    fact_value,
    find_collateral,
    find_mention,
    find_phrase,
    mention_phrases,
    value_renderings,
)
from crmbench_contracts.rewards import (
    PASS_THRESHOLD,
    REPORTED_THRESHOLDS,
    CheckResult,
    CollateralChange,
    RewardRecord,
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
) -> CheckResult:
    """One communication fact as a CheckResult; never raises."""
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
    expected: Any
    try:
        if fact.kind == "mentions":
            expected = fact.any_of
            phrases = mention_phrases(fact)
            found = find_phrase(reply, phrases)
            detail = (
                f"the reply mentions {found!r}"
                if found is not None
                else f"the reply mentions none of {compact(phrases)}"
            )
        else:
            expected = {"ref": fact.ref.model_dump() if fact.ref else None}
            value = fact_value(fact, world)
            expected["value"] = value
            found = find_mention(reply, value_renderings(value))
            detail = (
                f"the reply gives {found!r}"
                if found is not None
                else f"the reply does not give {compact(value)}"
            )
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
    return CheckResult(
        check_id=check_id,
        kind=fact.kind,
        passed=found is not None,
        score=1.0 if found is not None else 0.0,
        weight=fact.weight,
        expected=expected,
        actual=found,
        rationale=f"{fact.fact}: {detail}",
    )


# ---------------------------------------------------------------------------- score


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
    log = parse_changes(changes)
    judge_value = judges.value if judges is not None else None

    checks = [check_state(i, a, world) for i, a in enumerate(case.expected.state)]
    logged = flatten_changes(log)
    collateral = find_collateral(case.expected.allowed_changes, logged, world)
    checks.append(collateral_check(collateral, len(logged)))
    checks += [
        check_fact(
            i, fact, final_reply, world, judge_value=judge_value, pass_threshold=pass_threshold
        )
        for i, fact in enumerate(case.expected.communicate)
    ]

    weighted = [check for check in checks if check.weight > 0]
    if not any(check.kind != "collateral" for check in weighted):
        checks.append(
            CheckResult(
                check_id="case",
                kind="no_checks",
                passed=False,
                score=0.0,
                weight=0.0,
                rationale="the case has no weighted state or communication check, "
                "so doing nothing would pass: scored 0",
            )
        )
        structured = 0.0
    else:
        total = sum(check.weight for check in weighted)
        structured = sum(check.weight * check.score for check in weighted) / total
    if collateral:
        structured = 0.0

    score = structured
    if judge_value is not None:
        score = (1.0 - judge_weight) * structured + judge_weight * judge_value
    if collateral:
        score = 0.0
    structured = _unit(structured)
    score = _unit(score)
    thresholds = sorted({*REPORTED_THRESHOLDS, pass_threshold})
    return RewardRecord(
        case_id=case.case_id,
        episode_id=episode_id,
        score=score,
        passed=score >= pass_threshold,
        verdicts={threshold_key(t): score >= t for t in thresholds},
        checks=checks,
        collateral=collateral,
        judges=list(judges.judges) if judges is not None else [],
        arbiter=judges.arbiter if judges is not None else None,
        structured_score=structured,
        verification_mode=verification_mode(
            judge_value is not None, judges is not None and judges.arbiter is not None
        ),
    )


def _unit(value: float) -> float:
    """Clamped to [0, 1] and rounded, so 0.8999999999 from float sums reads as 0.9."""
    return round(min(1.0, max(0.0, value)), 6)
