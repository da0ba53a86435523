"""Session and step traces in the Atlas SDK's trace shape, so its tooling reads our runs.

One JSON line per session with its steps nested: what Atlas's runtime trace loader
(`load_runtime_traces`) reads. Field names follow `AtlasSessionTrace`, `AtlasStepTrace`
and `AtlasRewardBreakdown`; crm-bench specifics go into `session_metadata` and each step's
`metadata`, which Atlas carries through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from agent_runner.reports.reading import parse_traces
from crmbench_contracts.rewards import JudgeScore, RewardRecord
from crmbench_contracts.traces import SessionTrace, StepTrace

STEP_REWARD_RATIONALE = "the episode's reward: steps are not scored on their own"
DESCRIPTION_VALUE_CHARS = 60
"""Each argument's JSON is cut to this many characters in a step's description (the
full arguments are in `tool_params` and `trace`)."""


def _compact(value: Any) -> str:
    # Sorted keys: Postgres (JSONB) does not keep key order, and an export of a run must be
    # the same bytes whether it was read from the database or from sessions.jsonl.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def step_description(step: StepTrace) -> str:
    """`tool(name=value, ...)`, names sorted, values as JSON, long ones shortened."""
    arguments = []
    for name, value in sorted(step.arguments.items()):
        text = _compact(value)
        if len(text) > DESCRIPTION_VALUE_CHARS:
            text = text[: DESCRIPTION_VALUE_CHARS - 3] + "..."
        arguments.append(f"{name}={text}")
    return f"{step.tool}({', '.join(arguments)})"


def step_output(step: StepTrace) -> str:
    """The tool's answer in the shape the model was shown (`protocol.tool_result_content`),
    keys sorted: the body on success, `{"error": {...}, "status": ...}` on a refusal."""
    if step.ok:
        return _compact(step.result)
    return _compact({"status": step.status, "error": step.error})


def _judge(
    judge: JudgeScore, escalated: bool = False, escalation_reason: str | None = None
) -> dict[str, Any]:
    return {
        "identifier": judge.judge,
        "score": judge.score,
        "rationale": judge.rationale,
        "principles": [],
        "samples": [
            {
                "score": judge.score,
                "rationale": judge.rationale,
                "principles": [],
                "uncertainty": judge.uncertainty,
                "temperature": None,
            }
        ],
        "escalated": escalated,
        "escalation_reason": escalation_reason,
    }


def reward_rationale(record: RewardRecord) -> str:
    """Why the score is what it is: the failed checks and the collateral changes."""
    reasons = [
        f"{check.check_id}: {check.rationale}" for check in record.checks if not check.passed
    ]
    reasons += [
        f"collateral {change.op} {change.table} {change.key}: {change.reason}"
        for change in record.collateral
    ]
    return "; ".join(reasons) if reasons else "every check passed"


def atlas_reward(record: RewardRecord) -> dict[str, Any]:
    """The verifier's record as an AtlasRewardBreakdown dict.

    The structured checks become one judge (`structured`, one principle per check); each
    LLM judge becomes a judge. When judges disagreed and an arbiter decided, the judges
    are marked escalated and the arbiter is listed as its own judge.
    """
    structured = {
        "identifier": "structured",
        "score": record.structured_score,
        "rationale": reward_rationale(record),
        "principles": [
            {
                "name": check.check_id,
                "kind": check.kind,
                "weight": check.weight,
                "score": check.score,
                "passed": check.passed,
                "description": check.rationale,
            }
            for check in record.checks
        ],
        "samples": [],
        "escalated": False,
        "escalation_reason": None,
    }
    arbiter = record.arbiter
    reason = f"the judges disagreed; arbiter {arbiter.judge} decided" if arbiter else None
    judges = [structured] + [_judge(j, arbiter is not None, reason) for j in record.judges]
    if arbiter is not None:
        judges.append(_judge(arbiter.model_copy(update={"judge": f"arbiter:{arbiter.judge}"})))
    return {
        "score": record.score,
        "rationale": reward_rationale(record),
        "judges": judges,
        "raw": record.model_dump(mode="json"),
    }


def atlas_step(step: StepTrace, episode_score: float) -> dict[str, Any]:
    """One tool call as an AtlasStepTrace dict."""
    call = {
        "tool_call_id": step.tool_call_id,
        "tool": step.tool,
        "arguments": step.arguments,
        "status": step.status,
        "ok": step.ok,
        "result": step.result,
        "error": step.error,
    }
    return {
        "step_id": step.step_id,
        "description": step_description(step),
        "trace": _compact(call),
        "output": step_output(step),
        "reward": {
            "score": step.reward if step.reward is not None else episode_score,
            "rationale": STEP_REWARD_RATIONALE,
            "judges": [],
            "raw": None,
        },
        "tool": step.tool,
        "tool_params": step.arguments,
        "context": {},
        "validation": {"ok": step.ok, "status": step.status, "error": step.error},
        "attempts": 1,
        "guidance": list(step.guidance),
        "metadata": {
            "latency_ms": step.latency_ms,
            "llm_latency_ms": step.llm_latency_ms,
            "tokens": step.tokens.model_dump(mode="json"),
            "state_change": [change.model_dump(mode="json") for change in step.state_change],
            "tool_call_id": step.tool_call_id,
            "actor": step.actor,
            "started_at": step.started_at.isoformat(),
        },
        "artifacts": {},
        "deliverable": None,
        "runtime": None,
        "depends_on": [],
    }


def atlas_trajectory_events(session: SessionTrace) -> list[dict[str, Any]] | None:
    """The episode's learning-loop events as Atlas trajectory events (`{"event": ...}`,
    the payload of the SDK's `trajectory_events.event` column): the retrieval (entries,
    similarities, injected digest), the lane decision, each supervision transition, each
    guidance message and failed teacher call, and the adoptions. None for an episode
    without the learning loop."""
    context = session.crm_context
    if context.learning_mode is None:
        return None
    events: list[dict[str, Any]] = [
        {
            "event": {
                "type": "retrieval",
                "retrieved": [r.model_dump(mode="json") for r in context.playbooks_retrieved],
                "injected_digest": context.injected_digest,
            }
        }
    ]
    if context.lane is not None:
        events.append({"event": {"type": "lane_decision", **context.lane.model_dump(mode="json")}})
    for transition in context.supervision_transitions[1:]:
        events.append(
            {"event": {"type": "supervision_transition", **transition.model_dump(mode="json")}}
        )
    for payload in context.trajectory:
        event = {key: value for key, value in payload.items() if key != "kind"}
        events.append({"event": {"type": payload.get("kind"), **event}})
    for entry_id in context.playbooks_adopted:
        events.append({"event": {"type": "adoption", "entry_id": entry_id}})
    return events


def atlas_adaptive_summary(session: SessionTrace) -> dict[str, Any] | None:
    """The lane as the SDK's adaptive summary: `adaptive_mode` (auto, paired, coach,
    escalate), its confidence and reason, and the mode history (every supervision
    transition). None without triage."""
    context = session.crm_context
    if context.lane is None:
        return None
    return {
        "adaptive_mode": context.lane.lane,
        "confidence": context.lane.confidence,
        "reason": context.lane.reason,
        "probe_source": context.lane.source,
        "mode_history": [t.model_dump(mode="json") for t in context.supervision_transitions],
    }


def atlas_session(session: SessionTrace, steps: Sequence[StepTrace]) -> dict[str, Any]:
    """One episode as an AtlasSessionTrace dict, its steps nested.

    The agents act step by step without an upfront plan, so `plan` lists the calls as
    they were made (Atlas tools look a step's description and tool up in the plan).
    """
    ordered = sorted(steps, key=lambda step: step.step_id)
    # How the reply was read (the reward record's, else the trace's for older traces).
    mode = session.reward.verification_mode if session.reward else None
    mode = mode or session.crm_context.verification_mode
    atlas_steps = [atlas_step(step, session.score) for step in ordered]
    return {
        "task": session.task,
        "final_answer": session.final_answer,
        "plan": {
            "steps": [
                {
                    "id": step["step_id"],
                    "description": step["description"],
                    "tool": step["tool"],
                    "tool_params": step["tool_params"],
                    "depends_on": [],
                }
                for step in atlas_steps
            ],
            "execution_mode": "stepwise",
        },
        "steps": atlas_steps,
        "session_metadata": {
            "session_id": session.session_id,
            "run_id": session.run_id,
            "case_id": session.case_id,
            "trial": session.trial,
            "episode_id": session.episode_id,
            "agent": session.agent,
            "model": session.model,
            "outcome": session.outcome,
            "error": session.error,
            "score": session.score,
            "passed": session.passed,
            "verdicts": session.verdicts,
            "verification_mode": mode.value if mode is not None else None,
            "steps": session.steps,
            "crm_context": session.crm_context.model_dump(mode="json"),
            "token_usage": {
                audience: usage.model_dump(mode="json")
                for audience, usage in session.token_usage.items()
            },
            "total_tokens": session.total_tokens,
            "cost_usd": session.cost_usd,
            "started_at": session.started_at.isoformat(),
            "ended_at": session.ended_at.isoformat(),
            "wall_ms": session.wall_ms,
            "agent_ms": session.agent_ms,
            "worker": session.worker,
        },
        "session_reward": atlas_reward(session.reward) if session.reward is not None else None,
        "trajectory_events": atlas_trajectory_events(session),
        "student_learning": None,
        "teacher_learning": None,
        "learning_history": None,
        "adaptive_summary": atlas_adaptive_summary(session),
    }


def atlas_lines(
    sessions_with_steps: Iterable[tuple[SessionTrace, Sequence[StepTrace]]],
) -> Iterator[str]:
    """One JSON line (without its newline) per session, produced lazily."""
    for session, steps in sessions_with_steps:
        yield json.dumps(atlas_session(session, steps), ensure_ascii=False, sort_keys=True)


def write_atlas_jsonl(
    sessions_with_steps: Iterable[tuple[SessionTrace, Sequence[StepTrace]]], out: Path
) -> int:
    """Writes the Atlas JSONL file (replacing it); returns the number of sessions."""
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8") as handle:
        for line in atlas_lines(sessions_with_steps):
            handle.write(line + "\n")
            count += 1
    return count


def group_traces(
    lines: Iterable[str], source: str = "<traces>"
) -> list[tuple[SessionTrace, list[StepTrace]]]:
    """The (session, steps) pairs of a sessions.jsonl's lines; steps go to the session id
    they carry. Same tolerance as `reading.parse_traces` (a cut-short last line is
    skipped; the last copy of a repeated session wins)."""
    return parse_traces(lines, source).pairs()
