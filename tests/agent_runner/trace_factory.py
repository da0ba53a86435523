"""Session and step traces for tests, with defaults for every field a test does not care about,
and a writer that lays them out as the runner does (its own `episode_lines`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent_runner.run.trace_log import TRACE_FILE, episode_lines
from crmbench_contracts import rewards
from crmbench_contracts.rewards import (
    REPORTED_THRESHOLDS,
    CheckResult,
    CollateralChange,
    JudgeScore,
    RewardRecord,
    VerificationMode,
)
from crmbench_contracts.traces import (
    CrmContext,
    EpisodeOutcome,
    SessionTrace,
    StateChange,
    StepTrace,
    TokenUsage,
)

STARTED = datetime(2025, 11, 12, 9, 0, tzinfo=UTC)


def verdicts_for(score: float) -> dict[str, bool]:
    return {f"{t:g}": score >= t for t in REPORTED_THRESHOLDS}


def make_session(
    case_id: str = "CASE-1",
    trial: int = 0,
    score: float = 1.0,
    *,
    run_id: str = "run-1",
    outcome: EpisodeOutcome = "completed",
    error: str | None = None,
    split: str = "eval",
    task_category: str = "create_opportunity",
    difficulty: str = "simple",
    failure_category: str | None = None,
    failure_family: str | None = None,
    student_tokens: tuple[int, int] = (1000, 200),
    teacher_tokens: tuple[int, int] = (0, 0),
    cost_usd: float | None = 0.01,
    reward: RewardRecord | None = None,
    steps: int = 0,
    agent: str = "student",
    model: str | None = "gpt-4.1",
    task: str = "Create an opportunity for Acme worth 5000.",
    final_answer: str = "Done: opportunity created.",
    verification_mode: VerificationMode | None = None,
) -> SessionTrace:
    """A session; its verification mode is the reward's, else `verification_mode`, else
    offline (none for a harness error, which was not verified), as the runner fills it."""
    if reward is not None:
        verification_mode = reward.verification_mode
    elif verification_mode is None and outcome != "harness_error":
        verification_mode = VerificationMode.OFFLINE
    student = TokenUsage(
        calls=1 if sum(student_tokens) else 0,
        input_tokens=student_tokens[0],
        output_tokens=student_tokens[1],
        cost_usd=cost_usd,
    )
    teacher = TokenUsage(
        calls=1 if sum(teacher_tokens) else 0,
        input_tokens=teacher_tokens[0],
        output_tokens=teacher_tokens[1],
        cost_usd=0.0,
    )
    return SessionTrace(
        session_id=f"{run_id}/{case_id}/{trial}",
        run_id=run_id,
        case_id=case_id,
        trial=trial,
        agent=agent,
        model=model,
        episode_id=f"ep-{case_id}-{trial}",
        task=task,
        final_answer=final_answer,
        outcome=outcome,
        error=error,
        steps=steps,
        score=score,
        passed=score >= 0.9,
        verdicts=verdicts_for(score),
        reward=reward,
        token_usage={"student": student, "teacher": teacher},
        crm_context=CrmContext(
            case_id=case_id,
            task_category=task_category,
            workflow="opportunity",
            difficulty=difficulty,
            split=split,
            failure_category=failure_category,
            failure_family=failure_family,
            verification_mode=verification_mode,
        ),
        started_at=STARTED,
        ended_at=STARTED,
        wall_ms=1500.0,
        agent_ms=1200.0,
        worker="host:1",
    )


def make_step(
    session: SessionTrace,
    step_id: int = 1,
    *,
    tool: str = "create_opportunity",
    arguments: dict[str, Any] | None = None,
    ok: bool = True,
    status: int = 201,
    result: Any = None,
    error: dict[str, Any] | None = None,
    guidance: Sequence[str] = (),
    state_change: Sequence[StateChange] = (),
) -> StepTrace:
    return StepTrace(
        session_id=session.session_id,
        step_id=step_id,
        tool_call_id=f"call_{step_id}",
        tool=tool,
        arguments=arguments if arguments is not None else {"name": "Acme deal", "amount": 5000},
        status=status,
        ok=ok,
        result=result if result is not None or not ok else {"opportunity_id": 42},
        error=error,
        latency_ms=12.5,
        llm_latency_ms=800.0,
        tokens=TokenUsage(calls=1, input_tokens=900, output_tokens=50, cost_usd=0.005),
        guidance=list(guidance),
        reward=session.score,
        state_change=list(state_change),
        started_at=STARTED,
    )


def make_reward(
    case_id: str = "CASE-1",
    score: float = 0.5,
    *,
    failed_check: str | None = "amount is 5000 (found 500)",
    judges: Sequence[JudgeScore] = (),
    arbiter: JudgeScore | None = None,
    collateral: Sequence[CollateralChange] = (),
    verification_mode: VerificationMode | None = None,
) -> RewardRecord:
    """A reward record; its verification mode is what `judges` and `arbiter` imply unless
    given."""
    checks = [
        CheckResult(
            check_id="opportunity_exists",
            kind="row_exists",
            passed=True,
            score=1.0,
            weight=1.0,
            rationale="the opportunity exists",
        )
    ]
    if failed_check is not None:
        checks.append(
            CheckResult(
                check_id="amount",
                kind="field_equals",
                passed=False,
                score=0.0,
                weight=1.0,
                expected=5000,
                actual=500,
                rationale=failed_check,
            )
        )
    return RewardRecord(
        case_id=case_id,
        episode_id=f"ep-{case_id}-0",
        score=score,
        passed=score >= 0.9,
        verdicts=verdicts_for(score),
        checks=checks,
        collateral=list(collateral),
        judges=list(judges),
        arbiter=arbiter,
        structured_score=score,
        verification_mode=verification_mode
        or rewards.verification_mode(bool(judges), arbiter is not None),
    )


def write_run(
    directory: Path,
    episodes: Sequence[SessionTrace | tuple[SessionTrace, Sequence[StepTrace]]],
    run_info: dict[str, Any] | None = None,
) -> Path:
    """A run directory as the runner leaves it; returns the sessions.jsonl path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TRACE_FILE
    with path.open("wb") as handle:
        for episode in episodes:
            session, steps = episode if isinstance(episode, tuple) else (episode, ())
            handle.write(episode_lines(session, steps))
    if run_info is not None:
        (directory / "run.json").write_text(json.dumps(run_info), encoding="utf-8")
    return path
