"""The run report: pass rates with confidence intervals, pass^k, breakdowns and cost, all
computed from a run's session traces (never hand-entered; see design/learning.md).

Everything but `load_report` is a pure function of the traces, so tests and notebooks get
the same numbers. Harness errors (the CRM API or the verifier failed) are not the agent's
fault: they are listed and counted apart, and left out of every pass-rate denominator.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, Field

from agent_runner.agents.factory import SIMULATED_MODEL
from agent_runner.reports.reading import (
    ReadNotes,
    ResultsError,
    RunInfo,
    load_run_info,
    read_traces,
)
from agent_runner.run.trace_log import RUN_FILE
from crmbench_contracts.cases import FAILURE_CATEGORIES, Difficulty, FailureFamily, Split
from crmbench_contracts.rewards import PASS_THRESHOLD, REPORTED_THRESHOLDS, VerificationMode
from crmbench_contracts.traces import Audience, EpisodeOutcome, PlaybookRetrieval, SessionTrace

SUCCESS_PATH = "success path"
"""The group of cases with no failure category: the request is valid and must succeed."""
Z_95 = statistics.NormalDist().inv_cdf(0.975)
HARNESS_ERROR: EpisodeOutcome = "harness_error"
HARNESS_NOTE = (
    "harness errors (the CRM API or the verifier failed) are not the agent's fault: "
    "they are left out of every pass rate, pass^k, mean score and cost figure"
)


NOT_VERIFIED = "not verified"
"""The verification mode group of episodes without a reward record (harness errors)."""
MIXED_MODES_NOTE = (
    "episodes were verified in more than one mode (see 'verification'); scores read "
    "offline and by LLM judges are not directly comparable"
)


def verification_mode_of(session: SessionTrace) -> str:
    """How the session's reply was read: the reward record's mode (the source), else the
    trace's `crm_context.verification_mode` (older traces), else NOT_VERIFIED."""
    if session.reward is not None:
        return session.reward.verification_mode.value
    mode = session.crm_context.verification_mode
    return mode.value if mode is not None else NOT_VERIFIED


def threshold_key(threshold: float) -> str:
    """The key of a threshold in `SessionTrace.verdicts` and in the report: 0.7 -> "0.7"."""
    return f"{threshold:g}"


SIMULATED_COST_NOTE = (
    "simulated cost: what gpt-4.1 would have cost for these tokens (the simulated LLM is "
    "priced as gpt-4.1 in config/prices.yaml); no money was spent"
)
THRESHOLD_KEYS = tuple(threshold_key(t) for t in REPORTED_THRESHOLDS)
PASS_KEY = threshold_key(PASS_THRESHOLD)


def wilson_interval(successes: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0/n and n/n,
    which is where reliability figures live.
    """
    if total <= 0:
        raise ValueError("a confidence interval needs at least one trial")
    if not 0 <= successes <= total:
        raise ValueError(f"successes ({successes}) must be within 0..{total}")
    p = successes / total
    z2 = z * z
    denominator = 1 + z2 / total
    centre = (p + z2 / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_hat_k(passes_per_case: Mapping[str, Sequence[bool]], k: int) -> tuple[float | None, int]:
    """pass^k as in tau-bench: per case, the chance that k trials drawn from its n all
    pass, C(c, k) / C(n, k), averaged over the cases with at least k trials.

    Returns (value, cases used); value is None when no case has k trials.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    estimates = [
        math.comb(sum(results), k) / math.comb(len(results), k)
        for results in passes_per_case.values()
        if len(results) >= k
    ]
    if not estimates:
        return None, 0
    return statistics.fmean(estimates), len(estimates)


def passes(session: SessionTrace, key: str) -> bool:
    """The session's verdict at a threshold key; from its score when no verdict was kept."""
    verdict = session.verdicts.get(key)
    return verdict if verdict is not None else session.score >= float(key)


# ---------------------------------------------------------------------------- the report


class Rate(BaseModel):
    """A pass rate with its count and 95% Wilson interval (None when nothing was scored)."""

    passed: int
    total: int
    rate: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, passed: int, total: int) -> Rate:
        if total == 0:
            return cls(passed=0, total=0, rate=None, low=None, high=None)
        low, high = wilson_interval(passed, total)
        return cls(passed=passed, total=total, rate=passed / total, low=low, high=high)


class PassHatK(BaseModel):
    k: int
    cases: int
    """Cases with at least k scored trials (the others cannot be counted at this k)."""
    values: dict[str, float | None]
    """pass^k per threshold key ("0.7", "0.8", "0.9")."""


class GroupStats(BaseModel):
    """One row of a breakdown."""

    group: str
    episodes: int
    harness_errors: int
    scored: int
    """Episodes that count: all but harness errors."""
    pass_rates: dict[str, Rate]
    mean_score: float | None


class Breakdown(BaseModel):
    dimension: str
    groups: list[GroupStats]


class UsageFigure(BaseModel):
    """One quantity (tokens or dollars) over the scored episodes."""

    total: float | None
    per_episode: float | None
    per_passing_episode: float | None
    """Mean over the episodes that passed at 0.9."""
    per_pass: float | None
    """Total divided by the number of passes at 0.9: what one success costs."""


class CostSummary(BaseModel):
    episodes: int
    passes: int
    student_tokens: UsageFigure
    teacher_tokens: UsageFigure
    tokens: UsageFigure
    cost_usd: UsageFigure
    unpriced_episodes: int
    """Episodes whose model had no price: the cost figures are None when this is > 0."""
    simulated_note: str | None = None
    """Set when episodes ran on the simulated LLM: their cost is what the model it is
    priced as would have cost (SIMULATED_COST_NOTE), not money spent."""
    """Episodes whose model had no price: the cost figures are None when this is > 0."""


class HarnessErrorEntry(BaseModel):
    session_id: str
    case_id: str
    trial: int
    error: str | None


class RunReport(BaseModel):
    """Everything `crmbench results` prints, as data (`--json` prints this model)."""

    run: RunInfo | None
    reading: ReadNotes
    run_ids: list[str]
    agents: list[str]
    models: list[str]
    episodes: int
    """Every episode, harness errors included."""
    scored_episodes: int
    cases: int
    trials: int
    """Planned trials per case (run.json), else the most any case has."""
    pass_rates: dict[str, Rate]
    mean_score: float | None
    pass_hat_k: list[PassHatK]
    """k = 1..trials; empty for single-trial runs."""
    breakdowns: list[Breakdown]
    verification_modes: dict[str, dict[str, int]]
    """Per run id: its scored episodes per verification mode (`offline`, `judges`,
    `judges+arbiter`; see crmbench_contracts.rewards.VerificationMode)."""
    cost: CostSummary
    cue_hit: Rate | None = None
    """Cue hit rate (design/learning.md): episodes with at least one playbook entry
    retrieved / episodes whose retrieval ran (`crm_context.learning_mode` set); None when
    no episode ran one (a run without learning)."""
    adoption: Rate | None = None
    """Adoption rate (design/learning.md): retrieved playbook entries that were injected
    and followed (`crm_context.playbooks_adopted`) / retrieved entries, over the scored
    episodes whose retrieval ran; None when no episode ran one."""
    unobservable_retrievals: int = 0
    """Retrieved entries left out of the adoption rate: their action names no tool or
    argument rule (universal advice), so no trace can show them followed."""
    lanes: dict[str, int] = Field(default_factory=dict)
    """Episodes per supervision lane picked by triage (learning mode `on`)."""
    guidance_messages: int = 0
    """Guidance messages the teacher gave during episodes (coach and paired lanes)."""
    teacher_retries: int = 0
    """Episodes whose final reply the teacher sent back for one retry (paired lane)."""
    harness_errors: list[HarnessErrorEntry]
    notes: list[str]
    warnings: list[str]


def lane_mix(sessions: Sequence[SessionTrace]) -> tuple[dict[str, int], int, int]:
    """Episodes per triage lane, guidance messages, and retries ordered, from the traces."""
    lanes: dict[str, int] = {}
    guidance = retries = 0
    for session in sessions:
        context = session.crm_context
        if context.lane is not None:
            lanes[context.lane.lane] = lanes.get(context.lane.lane, 0) + 1
        guidance += sum(1 for event in context.trajectory if event.get("kind") == "guidance")
        retries += sum(
            1
            for transition in context.supervision_transitions
            if transition.from_lane is not None and transition.source == "teacher"
        )
    return dict(sorted(lanes.items())), guidance, retries


def _rates(sessions: Sequence[SessionTrace]) -> dict[str, Rate]:
    return {
        key: Rate.of(sum(passes(s, key) for s in sessions), len(sessions)) for key in THRESHOLD_KEYS
    }


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _group_stats(name: str, sessions: Sequence[SessionTrace]) -> GroupStats:
    scored = [s for s in sessions if s.outcome != HARNESS_ERROR]
    return GroupStats(
        group=name,
        episodes=len(sessions),
        harness_errors=len(sessions) - len(scored),
        scored=len(scored),
        pass_rates=_rates(scored),
        mean_score=_mean([s.score for s in scored]),
    )


def _breakdown(
    dimension: str,
    sessions: Sequence[SessionTrace],
    key: Callable[[SessionTrace], str],
    order: Sequence[str] = (),
) -> Breakdown:
    """Groups in the domain's order (enum order), then any other value alphabetically."""
    grouped: dict[str, list[SessionTrace]] = {}
    for session in sessions:
        grouped.setdefault(key(session), []).append(session)
    known = [name for name in order if name in grouped]
    others = sorted(name for name in grouped if name not in order)
    return Breakdown(
        dimension=dimension,
        groups=[_group_stats(name, grouped[name]) for name in known + others],
    )


def _breakdowns(sessions: Sequence[SessionTrace]) -> list[Breakdown]:
    return [
        _breakdown("split", sessions, lambda s: s.crm_context.split, [v.value for v in Split]),
        _breakdown("task category", sessions, lambda s: s.crm_context.task_category),
        _breakdown(
            "failure family",
            sessions,
            lambda s: s.crm_context.failure_family or SUCCESS_PATH,
            [SUCCESS_PATH, *(v.value for v in FailureFamily)],
        ),
        _breakdown(
            "failure category",
            sessions,
            lambda s: s.crm_context.failure_category or SUCCESS_PATH,
            [SUCCESS_PATH, *FAILURE_CATEGORIES],
        ),
        _breakdown(
            "difficulty",
            sessions,
            lambda s: s.crm_context.difficulty,
            [v.value for v in Difficulty],
        ),
        _breakdown(
            "verification mode",
            sessions,
            verification_mode_of,
            [*(v.value for v in VerificationMode), NOT_VERIFIED],
        ),
        _breakdown("outcome", sessions, lambda s: s.outcome, get_args(EpisodeOutcome)),
    ]


def _verification_modes(scored: Sequence[SessionTrace]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for session in scored:
        modes = counts.setdefault(session.run_id, {})
        mode = verification_mode_of(session)
        modes[mode] = modes.get(mode, 0) + 1
    order = [*(v.value for v in VerificationMode), NOT_VERIFIED]
    return {
        run_id: dict(sorted(modes.items(), key=lambda item: order.index(item[0])))
        for run_id, modes in sorted(counts.items())
    }


def _usage(values: Sequence[float] | None, passing: Sequence[float] | None) -> UsageFigure:
    """`values` over the scored episodes, `passing` over those that passed; None = unknown."""
    if values is None or passing is None:
        return UsageFigure(total=None, per_episode=None, per_passing_episode=None, per_pass=None)
    total = float(sum(values))
    return UsageFigure(
        total=total,
        per_episode=total / len(values) if values else None,
        per_passing_episode=_mean(passing),
        per_pass=total / len(passing) if passing else None,
    )


def _cost(scored: Sequence[SessionTrace]) -> CostSummary:
    passing = [s for s in scored if passes(s, PASS_KEY)]

    def tokens(audience: Audience | None) -> UsageFigure:
        def count(s: SessionTrace) -> float:
            if audience is None:
                return float(s.total_tokens)
            usage = s.token_usage.get(audience)
            return float(usage.total_tokens) if usage is not None else 0.0

        return _usage([count(s) for s in scored], [count(s) for s in passing])

    unpriced = sum(1 for s in scored if s.cost_usd is None)
    costs = None if unpriced else [s.cost_usd or 0.0 for s in scored]
    passing_costs = None if unpriced else [s.cost_usd or 0.0 for s in passing]
    return CostSummary(
        episodes=len(scored),
        passes=len(passing),
        student_tokens=tokens("student"),
        teacher_tokens=tokens("teacher"),
        tokens=tokens(None),
        cost_usd=_usage(costs, passing_costs),
        unpriced_episodes=unpriced,
        simulated_note=(
            SIMULATED_COST_NOTE if any(s.model == SIMULATED_MODEL for s in scored) else None
        ),
    )


def cue_hit_rate(sessions: Sequence[SessionTrace]) -> Rate | None:
    """Episodes with >= 1 retrieved playbook entry (below the universal level: see
    `_matched`) over the episodes whose retrieval ran,
    harness errors included (retrieval happened before whatever failed); None when no
    episode's retrieval ran."""
    learning = [s for s in sessions if s.crm_context.learning_mode is not None]
    if not learning:
        return None
    return Rate.of(sum(bool(_matched(s)) for s in learning), len(learning))


def _by_cue(session: SessionTrace) -> list[PlaybookRetrieval]:
    """The student-audience entries retrieved for the episode by their cue (the shuffled
    control's random draws and the teacher's own entries are not the student's cue
    matches)."""
    return [
        retrieval
        for retrieval in session.crm_context.playbooks_retrieved
        if retrieval.audience == "student" and retrieval.cue_match != "shuffled"
    ]


def _matched(session: SessionTrace) -> list[PlaybookRetrieval]:
    """`_by_cue` below the universal level: a universal entry's cue matches every task, so
    its retrieval says nothing about whether retrieval found the task's own lesson."""
    return [retrieval for retrieval in _by_cue(session) if retrieval.level != "universal"]


def adoption_rate(sessions: Sequence[SessionTrace]) -> Rate | None:
    """Retrieved playbook entries that were injected and followed over retrieved entries
    whose following a trace can show (`PlaybookRetrieval.observable`: the entry names a
    tool or an argument rule), counted over the scored episodes whose retrieval ran (a
    harness error may end an episode before its adoption is judged, so those are left
    out); None when no episode's retrieval ran. The interval treats each retrieval as one
    trial. `unobservable_retrievals` counts the ones left out."""
    learning = [
        s
        for s in sessions
        if s.crm_context.learning_mode is not None and s.outcome != HARNESS_ERROR
    ]
    if not learning:
        return None
    followed = total = 0
    for session in learning:
        adopted = set(session.crm_context.playbooks_adopted)
        for retrieval in _by_cue(session):
            if not retrieval.observable:
                continue
            total += 1
            followed += int(retrieval.injected and retrieval.entry_id in adopted)
    return Rate.of(followed, total)


def unobservable_retrievals(sessions: Sequence[SessionTrace]) -> int:
    """Retrieved entries (student, by cue) whose following no trace can show."""
    return sum(
        not retrieval.observable
        for s in sessions
        if s.crm_context.learning_mode is not None and s.outcome != HARNESS_ERROR
        for retrieval in _by_cue(s)
    )


def _distinct(values: Iterable[str | None]) -> list[str]:
    return sorted({v for v in values if v})


def build_report(
    sessions: Sequence[SessionTrace],
    *,
    run: RunInfo | None = None,
    reading: ReadNotes | None = None,
) -> RunReport:
    """The run report of a set of sessions (one per case and trial)."""
    reading = reading or ReadNotes()
    warnings = list(reading.warnings)
    scored = [s for s in sessions if s.outcome != HARNESS_ERROR]
    harness = [s for s in sessions if s.outcome == HARNESS_ERROR]
    run_ids = _distinct(s.run_id for s in sessions)
    if len(run_ids) > 1:
        warnings.append(f"the traces mix {len(run_ids)} runs: {', '.join(run_ids)}")
    if run is not None and run.run_id and run_ids and run.run_id not in run_ids:
        warnings.append(f"{RUN_FILE} describes run {run.run_id}, not the traces' run")

    trials_seen: dict[str, set[int]] = {}
    per_case: dict[str, dict[str, list[bool]]] = {key: {} for key in THRESHOLD_KEYS}
    for session in sessions:
        trials_seen.setdefault(session.case_id, set()).add(session.trial)
    for session in scored:
        for key in THRESHOLD_KEYS:
            per_case[key].setdefault(session.case_id, []).append(passes(session, key))
    most_seen = max((len(t) for t in trials_seen.values()), default=0)
    planned = run.planned_trials if run is not None else None
    # A resumed run may hold more trials than it first planned: never hide any.
    trials = max(planned or 0, most_seen)

    pass_hat = []
    if trials > 1:
        for k in range(1, trials + 1):
            values: dict[str, float | None] = {}
            cases = 0
            for key in THRESHOLD_KEYS:
                values[key], cases = pass_hat_k(per_case[key], k)
            pass_hat.append(PassHatK(k=k, cases=cases, values=values))

    notes = [HARNESS_NOTE] if harness else []
    lanes, guidance_messages, teacher_retries = lane_mix(sessions)
    modes = _verification_modes(scored)
    if len({mode for counts in modes.values() for mode in counts}) > 1:
        notes.append(MIXED_MODES_NOTE)
    return RunReport(
        run=run,
        reading=reading,
        run_ids=run_ids,
        agents=_distinct(s.agent for s in sessions),
        models=_distinct(s.model for s in sessions),
        episodes=len(sessions),
        scored_episodes=len(scored),
        cases=len(trials_seen),
        trials=trials,
        pass_rates=_rates(scored),
        mean_score=_mean([s.score for s in scored]),
        pass_hat_k=pass_hat,
        breakdowns=_breakdowns(sessions),
        verification_modes=modes,
        cost=_cost(scored),
        cue_hit=cue_hit_rate(sessions),
        adoption=adoption_rate(sessions),
        unobservable_retrievals=unobservable_retrievals(sessions),
        lanes=lanes,
        guidance_messages=guidance_messages,
        teacher_retries=teacher_retries,
        harness_errors=[
            HarnessErrorEntry(
                session_id=s.session_id, case_id=s.case_id, trial=s.trial, error=s.error
            )
            for s in harness
        ],
        notes=notes,
        warnings=warnings,
    )


def load_report(path: Path) -> RunReport:
    """Reads a run directory (or a sessions .jsonl) and its run.json; builds the report."""
    contents = read_traces(path, with_steps=False)
    if not contents.sessions:
        raise ResultsError(
            f"{contents.notes.source} holds no session yet (has the run started?)",
            code="empty_run",
        )
    run: RunInfo | None = None
    try:
        run = load_run_info(path if path.is_dir() else path.parent)
    except ResultsError as exc:
        contents.notes.warnings.append(f"{exc}; reported without it")
    return build_report(contents.sessions, run=run, reading=contents.notes)
