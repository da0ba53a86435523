"""The run report: pass rates with confidence intervals, pass^k, breakdowns and cost, all
computed from a run's session traces (never hand-entered; see design/learning.md).

Reading is the only I/O here (`read_traces`, `load_run_info`, `load_report`); everything
else is a pure function of the traces, so tests and notebooks get the same numbers.
Harness errors (the CRM API or the verifier failed) are not the agent's fault: they are
listed and counted apart, and left out of every pass-rate denominator.
"""

from __future__ import annotations

import io
import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent_runner.trace_log import RUN_FILE, TRACE_FILE
from crmbench_contracts.cases import FAILURE_CATEGORIES, Difficulty, FailureFamily, Split
from crmbench_contracts.rewards import PASS_THRESHOLD, REPORTED_THRESHOLDS
from crmbench_contracts.traces import Audience, EpisodeOutcome, SessionTrace, StepTrace

SUCCESS_PATH = "success path"
"""The group of cases with no failure category: the request is valid and must succeed."""
Z_95 = statistics.NormalDist().inv_cdf(0.975)
HARNESS_ERROR: EpisodeOutcome = "harness_error"
HARNESS_NOTE = (
    "harness errors (the CRM API or the verifier failed) are not the agent's fault: "
    "they are left out of every pass rate, pass^k, mean score and cost figure"
)


class ResultsError(ValueError):
    """A run's traces cannot be read or summarised.

    `code` is machine-readable: `not_found`, `corrupt_line`, `invalid_record`,
    `orphan_step`, `bad_run_info` or `empty_run`. The message names the file and line.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def threshold_key(threshold: float) -> str:
    """The key of a threshold in `SessionTrace.verdicts` and in the report: 0.7 -> "0.7"."""
    return f"{threshold:g}"


SIMULATED_MODEL = "simulated-llm"
"""The model name of the simulated LLM's episodes (free, priced as gpt-4.1 in prices.yaml)."""
SIMULATED_COST_NOTE = (
    "simulated cost: what gpt-4.1 would have cost for these tokens (the simulated LLM is "
    "priced as gpt-4.1 in config/prices.yaml); no money was spent"
)
THRESHOLD_KEYS = tuple(threshold_key(t) for t in REPORTED_THRESHOLDS)
PASS_KEY = threshold_key(PASS_THRESHOLD)


# ---------------------------------------------------------------------------- reading


class ReadNotes(BaseModel):
    """What reading the trace file found besides the sessions themselves."""

    source: str | None = None
    duplicates: dict[str, int] = Field(default_factory=dict)
    """Session ids that appeared more than once, with how many times; the last copy is used."""
    truncated_last_line: int | None = None
    """The line number of a final line cut short by a killed writer (ignored)."""
    warnings: list[str] = Field(default_factory=list)


@dataclass
class TraceContents:
    """A sessions.jsonl read back: its sessions (deduplicated), their steps, and notes."""

    sessions: list[SessionTrace]
    steps: dict[str, list[StepTrace]] = field(default_factory=dict)
    """Steps per session id, in step order (empty lists when read with `with_steps=False`)."""
    notes: ReadNotes = field(default_factory=ReadNotes)

    def pairs(self) -> list[tuple[SessionTrace, list[StepTrace]]]:
        """(session, its steps) in file order."""
        return [(session, self.steps.get(session.session_id, [])) for session in self.sessions]

    def incomplete(self) -> list[str]:
        """Session ids with fewer step lines than the session says it made (cut short);
        only meaningful when the traces were read with their steps."""
        return [
            s.session_id for s in self.sessions if len(self.steps.get(s.session_id, [])) < s.steps
        ]


def _json(line: str) -> tuple[bool, Any]:
    """(True, value) for a JSON line; (False, None) when it is not JSON (a cut-short line)."""
    try:
        return True, json.loads(line)
    except ValueError:
        return False, None


def parse_traces(
    lines: Iterable[str], source: str = "<traces>", *, with_steps: bool = True
) -> TraceContents:
    """Parses the lines of a sessions.jsonl.

    A final line that is not JSON is a write cut short by a killed process: it is skipped
    and noted. A bad line anywhere else raises `ResultsError` naming the line. A session
    id seen twice keeps its last copy (and the steps that follow it), and is counted.
    Steps attach to the latest session line carrying their session id.
    """
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    sessions: dict[str, SessionTrace] = {}
    steps: dict[str, list[StepTrace]] = {}
    seen: dict[str, int] = {}
    notes = ReadNotes(source=source)
    for position, (number, line) in enumerate(numbered):
        where = f"{source} line {number}"
        parsed, record = _json(line)
        if not parsed:
            if position == len(numbered) - 1:
                notes.truncated_last_line = number
                notes.warnings.append(
                    f"{where} is cut short (a writer was killed mid-line); it was ignored"
                )
                continue
            raise ResultsError(
                f"{where} is not valid JSON; the file is corrupt in the middle "
                "(a writer killed mid-line and then resumed?) - repair or remove that line",
                code="corrupt_line",
            )
        if not isinstance(record, dict):
            raise ResultsError(
                f"{where} is not a trace record (a JSON object)", code="invalid_record"
            )
        kind = record.get("type")
        try:
            if kind == "session":
                session = SessionTrace.model_validate(record)
                seen[session.session_id] = seen.get(session.session_id, 0) + 1
                sessions[session.session_id] = session
                steps[session.session_id] = []
            elif kind == "step":
                if not with_steps:
                    continue
                step = StepTrace.model_validate(record)
                if step.session_id not in steps:
                    raise ResultsError(
                        f"{where} is a step of session {step.session_id!r}, "
                        "which has no session line before it",
                        code="orphan_step",
                    )
                steps[step.session_id].append(step)
            else:
                raise ResultsError(
                    f'{where} is not a trace record: "type" is {kind!r}, '
                    'expected "session" or "step"',
                    code="invalid_record",
                )
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(part) for part in first.get("loc", ()))
            raise ResultsError(
                f"{where} is not a valid {kind} trace: {at or 'record'}: {first.get('msg')}",
                code="invalid_record",
            ) from None
    duplicates = {sid: count for sid, count in seen.items() if count > 1}
    if duplicates:
        notes.duplicates = duplicates
        shown = ", ".join(list(duplicates)[:5]) + (" ..." if len(duplicates) > 5 else "")
        notes.warnings.append(
            f"{len(duplicates)} session id(s) appear more than once; the last copy of each "
            f"is used: {shown}"
        )
    for session_steps in steps.values():
        session_steps.sort(key=lambda step: step.step_id)
    return TraceContents(sessions=list(sessions.values()), steps=steps, notes=notes)


def trace_file(path: Path) -> Path:
    """The sessions.jsonl of a run directory, or `path` itself when it is a file."""
    return path / TRACE_FILE if path.is_dir() else path


def read_traces(path: Path, *, with_steps: bool = True) -> TraceContents:
    """Reads a run directory's sessions.jsonl (or a .jsonl file given directly)."""
    file = trace_file(path)
    if not file.exists():
        if path.is_dir():
            message = f"no {TRACE_FILE} in {path} (is it a run directory?)"
        else:
            message = f"no run directory or trace file at {path}"
        raise ResultsError(message, code="not_found")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read {file}: {exc}", code="not_found") from None
    return parse_traces(text.splitlines(), str(file), with_steps=with_steps)


def load_sessions(path: Path) -> list[SessionTrace]:
    """The sessions of a run directory's sessions.jsonl (or of a .jsonl path), last copy
    of each session id; see `parse_traces` for what is tolerated."""
    return read_traces(path, with_steps=False).sessions


class RunInfo(BaseModel):
    """The run's metadata from run.json (every field optional: the file may be older)."""

    model_config = ConfigDict(extra="ignore")

    run_id: str | None = None
    agent: str | None = None
    model: str | None = None
    trials: int | None = Field(default=None, ge=1)
    total_items: int | None = Field(default=None, ge=0)
    """Episodes planned: cases times trials."""
    corpus_hash: str | None = None
    package_version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _trials_from_config(self) -> RunInfo:
        # run.json keeps the trials in its config: report them here too, not null.
        if self.trials is None:
            self.trials = self.planned_trials
        return self

    @property
    def planned_trials(self) -> int | None:
        if self.trials is not None:
            return self.trials
        configured = self.config.get("trials")
        return configured if isinstance(configured, int) and configured >= 1 else None


def load_run_info(path: Path) -> RunInfo | None:
    """run.json of a run directory (`path` is the directory or the file); None if absent."""
    file = path / RUN_FILE if path.is_dir() else path
    if not file.exists():
        return None
    try:
        return RunInfo.model_validate_json(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValidationError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"{file} is unreadable: {reason}", code="bad_run_info") from None


# ---------------------------------------------------------------------------- statistics


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
    cost: CostSummary
    harness_errors: list[HarnessErrorEntry]
    notes: list[str]
    warnings: list[str]


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
        _breakdown("outcome", sessions, lambda s: s.outcome, get_args(EpisodeOutcome)),
    ]


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
        cost=_cost(scored),
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


# ---------------------------------------------------------------------------- rendering


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _interval(rate: Rate) -> str:
    if rate.low is None or rate.high is None:
        return "-"
    return f"[{rate.low:.1%}, {rate.high:.1%}]"


def _number(value: float | None, money: bool = False) -> str:
    if value is None:
        return "-"
    return f"${value:,.4f}" if money else f"{value:,.0f}"


def _table(columns: Sequence[str]) -> Table:
    """A borderless table: first column left-aligned, the figures right-aligned."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="")
    for index, column in enumerate(columns):
        table.add_column(Text(column), justify="left" if index == 0 else "right", no_wrap=True)
    return table


def _row(table: Table, *cells: str) -> None:
    table.add_row(*(Text(cell) for cell in cells))


def _header(report: RunReport) -> list[str]:
    run = report.run
    parts = [f"run {', '.join(report.run_ids) or (run.run_id if run else None) or '?'}"]
    if report.agents:
        parts.append(f"agent {', '.join(report.agents)}")
    if report.models:
        parts.append(f"model {', '.join(report.models)}")
    parts.append(f"{report.trials} trial{'s' if report.trials != 1 else ''} per case")
    lines = ["crm-bench results: " + " | ".join(parts)]
    details = []
    if run is not None and run.corpus_hash:
        details.append(f"corpus {run.corpus_hash[:16]}")
    if run is not None and run.package_version:
        details.append(f"crm-bench {run.package_version}")
    if report.reading.source:
        details.append(f"source {report.reading.source}")
    if details:
        lines.append(" | ".join(details))
    harness = len(report.harness_errors)
    planned = run.total_items if run is not None else None
    of_planned = f" (of {planned} planned)" if planned is not None else ""
    lines.append(
        f"{report.episodes} episodes{of_planned} of {report.cases} cases: "
        f"{report.scored_episodes} scored, "
        f"{harness} harness error{'s' if harness != 1 else ''} (never counted in pass rates: "
        "not the agent's fault)"
    )
    return lines


def render_report(report: RunReport) -> str:
    """The report as aligned plain-text tables (no colour), for a terminal or a file."""
    buffer = io.StringIO()
    # Wide enough that no table folds: each is only as wide as its content.
    console = Console(
        file=buffer,
        width=200,
        color_system=None,
        force_terminal=False,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=True,
    )
    for line in _header(report):
        console.print(line)
    for warning in report.warnings:
        console.print(f"warning: {warning}")
    console.print()

    console.print("Pass rate: share of scored episodes with score >= threshold")
    rates = _table(["score >=", "passed", "scored", "rate", "95% CI (Wilson)"])
    for key, rate in report.pass_rates.items():
        _row(rates, key, str(rate.passed), str(rate.total), _pct(rate.rate), _interval(rate))
    console.print(rates)
    mean = "-" if report.mean_score is None else f"{report.mean_score:.3f}"
    console.print(f"mean score {mean} over {report.scored_episodes} scored episodes")
    console.print()

    if report.pass_hat_k:
        console.print(
            "pass^k: chance that k trials of a case all pass "
            "(mean over cases of C(passes, k) / C(trials, k))"
        )
        hat = _table(["k", "cases", *(f">= {key}" for key in THRESHOLD_KEYS)])
        for entry in report.pass_hat_k:
            _row(
                hat,
                str(entry.k),
                str(entry.cases),
                *(_pct(entry.values.get(key)) for key in THRESHOLD_KEYS),
            )
        console.print(hat)
        console.print()

    for breakdown in report.breakdowns:
        console.print(f"By {breakdown.dimension}")
        table = _table(
            [
                breakdown.dimension,
                "episodes",
                "scored",
                *(f">= {key}" for key in THRESHOLD_KEYS),
                f"95% CI >= {PASS_KEY}",
                "mean score",
                "harness err",
            ],
        )
        for group in breakdown.groups:
            _row(
                table,
                group.group,
                str(group.episodes),
                str(group.scored),
                *(_pct(group.pass_rates[key].rate) for key in THRESHOLD_KEYS),
                _interval(group.pass_rates[PASS_KEY]),
                "-" if group.mean_score is None else f"{group.mean_score:.3f}",
                str(group.harness_errors),
            )
        console.print(table)
        console.print()

    cost = report.cost
    console.print(
        f"Tokens and cost over {cost.episodes} scored episodes "
        f"({cost.passes} passed at >= {PASS_KEY})"
    )
    usage = _table(["", "total", "per episode", "mean of passing", "total per pass"])
    for label, figure, money in (
        ("student tokens", cost.student_tokens, False),
        ("teacher tokens", cost.teacher_tokens, False),
        ("all tokens", cost.tokens, False),
        ("simulated cost (USD)" if cost.simulated_note else "cost (USD)", cost.cost_usd, True),
    ):
        _row(
            usage,
            label,
            _number(figure.total, money),
            _number(figure.per_episode, money),
            _number(figure.per_passing_episode, money),
            _number(figure.per_pass, money),
        )
    console.print(usage)
    if cost.simulated_note:
        console.print(cost.simulated_note)
    if cost.unpriced_episodes:
        console.print(
            f"cost unknown: {cost.unpriced_episodes} episode(s) used a model with no price "
            "in the price table"
        )
    console.print()

    if report.harness_errors:
        console.print(f"Harness errors ({len(report.harness_errors)}), excluded from pass rates:")
        shown = report.harness_errors[:20]
        for error in shown:
            console.print(
                f"  {error.case_id} trial {error.trial}: {error.error or 'no error recorded'}"
            )
        if len(report.harness_errors) > len(shown):
            console.print(f"  ... and {len(report.harness_errors) - len(shown)} more (--json)")
        console.print()
    for note in report.notes:
        console.print(f"note: {note}")
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines()) + "\n"
