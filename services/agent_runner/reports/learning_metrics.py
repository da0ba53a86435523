"""The learning metrics of issue 11, computed from run traces only (docs/experiment.md,
design/learning.md): reliability and pass^k, cue hit and adoption, reward, token and
reliability deltas paired by case against a baseline run, transfer, cost per success,
their trend in phases, and the playbook entries that moved reward the most.

Every figure is an `Interval`: its value, its 95% interval, what it counted and how the
interval was made. Rates use Wilson's interval; means and deltas use scipy's bootstrap
(BCa, 10,000 resamples, a fixed seed), resampling cases, so trials of one case move
together. `load_run` is the only I/O; everything else is a pure function of the traces.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from agent_runner.reports import formatting as fmt
from agent_runner.reports.reading import ResultsError, RunInfo, load_run_info, read_traces
from agent_runner.reports.statistics import (
    HARNESS_ERROR,
    PASS_KEY,
    SUCCESS_PATH,
    THRESHOLD_KEYS,
    Rate,
    adoption_rate,
    cue_hit_rate,
    lane_mix,
    passes,
)
from crmbench_contracts.playbooks import PlaybookExport
from crmbench_contracts.traces import SessionTrace

IntervalMethod = Literal["wilson", "bootstrap", "paired_bootstrap", "none"]

CONFIDENCE = 0.95
"""The level of every interval (docs/experiment.md: "a 95% interval")."""
BOOTSTRAP_RESAMPLES = 10_000
"""Resamples of every bootstrap (docs/experiment.md)."""
BOOTSTRAP_SEED = 20261201
"""The seed of every bootstrap: each call starts a fresh `np.random.default_rng` from it,
so a figure does not depend on which figures were computed before it."""
DEFAULT_PHASE_SIZE = 25
"""Episodes per phase (design/learning.md: "for example 25-episode windows")."""
TOP_ENTRIES = 10
"""How many playbook entries `RunMetrics.top_entries` keeps."""

BOOTSTRAP_BATCH = 1_000
"""Resamples evaluated at once: bounds memory (resamples x cases floats) and, for paired
samples, is several times faster than all at once; the result does not depend on it."""

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------------- the models


class Interval(BaseModel):
    """One figure with its 95% interval.

    `value` is the estimate; `low`/`high` its interval (None when it cannot be made: no
    data, or a bound that is unbounded, such as a cost per success when resamples hold no
    success). `count` and `total`: for a rate, successes and trials (episodes, cases or
    retrievals); for a mean or a delta, the observations averaged and the units they
    came from (e.g. episodes and episodes, or cases used and cases in common). `method`
    says how the interval was made: `wilson` (a binomial rate), `bootstrap` (resampling
    cases of one run), `paired_bootstrap` (resampling cases common to two runs, both runs'
    figures of a case together), `none` (no interval: nothing to estimate from).
    """

    value: float | None
    low: float | None
    high: float | None
    count: int
    total: int
    method: IntervalMethod

    @classmethod
    def empty(cls, total: int = 0, count: int = 0) -> Interval:
        """No estimate: nothing was counted (or the figure is undefined, e.g. a division
        by a zero baseline)."""
        return cls(value=None, low=None, high=None, count=count, total=total, method="none")

    @classmethod
    def wilson(cls, successes: int, total: int) -> Interval:
        """A rate with its Wilson 95% interval (statistics.wilson_interval); `empty`
        when `total` is 0."""
        return cls.of_rate(Rate.of(successes, total))

    @classmethod
    def of_rate(cls, rate: Rate) -> Interval:
        if rate.total == 0:
            return cls.empty()
        return cls(
            value=rate.rate,
            low=rate.low,
            high=rate.high,
            count=rate.passed,
            total=rate.total,
            method="wilson",
        )


class Phase(BaseModel):
    """One window of `phase_size` episodes of a run, in the order they started.

    Episode numbers are 1-based positions in that order; `episodes` counts harness errors
    too, the figures leave them out (as every pass rate does)."""

    index: int
    first_episode: int
    last_episode: int
    episodes: int
    reliability: Interval
    """Pass rate at 0.9 over the phase's scored episodes (Wilson)."""
    mean_reward: Interval
    mean_tokens: Interval
    """Input plus output tokens, student and teacher, per scored episode."""
    cue_hit: Interval | None
    """None when no episode of the phase ran a retrieval."""
    lanes: dict[str, int]
    guidance_messages: int


class EntryEffect(BaseModel):
    """A playbook entry's reward with and without it, from the traces' retrievals: `with`
    the scored episodes that retrieved and injected it, `without` those that retrieved it
    (its cue matched) but did not inject it (ranked below k, or withheld by exploration):
    the same comparison the memory's bookkeeping makes (learning.adoption)."""

    entry_id: str
    text: str | None
    """The entry's action text, from a playbook export when given; else None."""
    level: str | None
    """The entry's abstraction level: the export's, else the traces'."""
    episodes_with: int
    episodes_without: int
    reward_with: float | None
    reward_without: float | None
    delta: float | None
    """reward_with - reward_without; None unless both sides have episodes."""


class RunMetrics(BaseModel):
    """The learning metrics of one run (docs/experiment.md, "Learning metrics")."""

    name: str
    run_id: str
    split: str | None
    learning_mode: str | None
    """run.json's `learning.mode` (off, frozen, on); from the traces when it is absent."""
    control: str | None
    """`retrieval` or `shuffled` (the shuffled-guidance control) when learning ran."""
    episodes: int
    scored: int
    """Episodes that count: all but harness errors."""
    reliability: dict[str, Interval]
    """Per threshold key ("0.7", "0.8", "0.9"): scored episodes with score >= t (Wilson)."""
    pass_hat_k: dict[int, Interval]
    """k = 1..the most trials a case has, at 0.9: the mean over cases with >= k scored
    trials of C(passes, k) / C(trials, k); bootstrap over those cases."""
    mean_reward: Interval
    mean_tokens: Interval
    cost_usd: float | None
    """Total cost of the scored episodes; None when some episode's model had no price."""
    cost_per_success: Interval | None
    """Total cost / episodes passed at 0.9 (bootstrap over cases); None without a cost."""
    cue_hit: Interval | None
    adoption: Interval | None
    lanes: dict[str, int]
    guidance_messages: int
    by_category: dict[str, Interval]
    """Reliability at 0.9 per task category (Wilson)."""
    by_family: dict[str, Interval]
    """Reliability at 0.9 per failure family; success-path cases as "success path"."""
    phases: list[Phase]
    top_entries: list[EntryEffect]
    """At most TOP_ENTRIES entries, largest |delta| first, then those without a delta by
    episodes with them."""
    phase_size: int = DEFAULT_PHASE_SIZE
    cases: int = 0
    """Distinct cases with a scored episode."""
    warnings: list[str] = []


class Comparison(BaseModel):
    """A run against a baseline, paired by case: only cases with a scored episode in
    both count, and each case's trials are averaged first (docs/experiment.md)."""

    run: str
    baseline: str
    cases: int
    """Cases in common."""
    reward_delta: Interval
    """Mean over common cases of (mean score in run - mean score in baseline)."""
    token_delta: Interval
    """Mean over common cases whose baseline used tokens of (baseline tokens - run
    tokens) / baseline tokens: positive when the run used fewer."""
    reliability_delta: Interval
    """Mean over common cases of (pass rate at 0.9 in run - in baseline)."""
    transfer: Interval | None
    """(run pass rate - baseline pass rate) / baseline pass rate at 0.9 over the common
    cases, the interval by paired bootstrap of that ratio of means; value None when the
    baseline passes nothing there."""
    baseline_reliability: Interval | None = None
    """The baseline's pass rate at 0.9 over the common cases (case means; bootstrap)."""
    run_reliability: Interval | None = None
    """The run's pass rate at 0.9 over the common cases (case means; bootstrap)."""


class LearningReport(BaseModel):
    """What `crmbench learning-report` prints (`--format json` is this model)."""

    runs: list[RunMetrics]
    comparisons: list[Comparison]
    phase_size: int


@dataclass
class RunData:
    """One run as read from its folder: its run.json (None if absent) and its sessions."""

    name: str
    path: Path
    info: RunInfo | None
    sessions: list[SessionTrace]


# ---------------------------------------------------------------------------- reading


def load_run(path: Path, name: str | None = None) -> RunData:
    """Reads a run folder (or an experiment stage folder, or a sessions .jsonl): its
    sessions (last copy of each) and its run.json. `name` defaults to the folder's name.

    When run.json names a run id the traces hold, only that run's sessions are kept.
    Raises ResultsError: `not_found` (no folder or trace file), `corrupt_line` /
    `invalid_record` (a bad trace line), `bad_run_info` (unreadable run.json), `empty_run`
    (no session yet).
    """
    directory = path if path.is_dir() else path.parent
    contents = read_traces(path, with_steps=False)
    info = load_run_info(directory)
    sessions = contents.sessions
    if info is not None and info.run_id and any(s.run_id == info.run_id for s in sessions):
        sessions = [s for s in sessions if s.run_id == info.run_id]
    if not sessions:
        raise ResultsError(
            f"{contents.notes.source} holds no session yet (has the run started?)",
            code="empty_run",
        )
    return RunData(
        name=name or directory.resolve().name,
        path=path,
        info=info,
        sessions=sessions,
    )


# ---------------------------------------------------------------------------- bootstrap


def _statistic_value(statistic: Callable[..., Any], samples: Sequence[FloatArray]) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(statistic(*samples, axis=-1))


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _scipy_bootstrap() -> Callable[..., Any]:
    """scipy.stats.bootstrap, imported when first needed (scipy takes a second to load)."""
    from scipy.stats import bootstrap  # type: ignore[import-untyped]

    return cast(Callable[..., Any], bootstrap)


def _rng_keyword() -> str:
    """scipy >= 1.15 takes the generator as `rng` (SPEC 7); older ones as `random_state`."""
    import inspect

    return "rng" if "rng" in inspect.signature(_scipy_bootstrap()).parameters else "random_state"


def bootstrap_interval(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., Any],
) -> tuple[float | None, float | None, float | None]:
    """(value, low, high) of `statistic` over `samples`: equal-length arrays, one entry
    per case; with more than one array a case's entries are resampled together
    (scipy.stats.bootstrap with paired=True).

    `statistic(*arrays, axis=-1)` must be vectorised along the last axis. The interval is
    BCa (95%, BOOTSTRAP_RESAMPLES resamples, seed BOOTSTRAP_SEED). When BCa degenerates
    (a bound is not finite: e.g. every resample gives the same value, or some give a ratio
    over zero) it falls back to the percentile interval of the same resamples, leaving out
    undefined ones (0/0). When every array is constant, or there is one case, the interval
    is the value itself. A value or bound that is not finite is None (a bound: unbounded).
    """
    bootstrap = _scipy_bootstrap()
    arrays = [np.asarray(sample, dtype=np.float64) for sample in samples]
    n = len(arrays[0])
    if n == 0:
        return None, None, None
    value = _finite(_statistic_value(statistic, arrays))
    if value is None:
        return None, None, None
    if n < 2 or all(np.all(array == array[0]) for array in arrays):
        return value, value, value
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # A degenerate BCa warns and returns nan; the fallback below handles it.
        warnings.simplefilter("ignore")
        try:
            result = bootstrap(
                tuple(arrays),
                statistic,
                # One sample needs no pairing (and scipy is faster without it).
                paired=len(arrays) > 1,
                vectorized=True,
                batch=BOOTSTRAP_BATCH,
                n_resamples=BOOTSTRAP_RESAMPLES,
                confidence_level=CONFIDENCE,
                method="BCa",
                **{_rng_keyword(): np.random.default_rng(BOOTSTRAP_SEED)},
            )
        except ValueError:
            return value, None, None
    low = _finite(float(result.confidence_interval.low))
    high = _finite(float(result.confidence_interval.high))
    if low is not None and high is not None:
        return value, low, high
    return (value, *_percentile_interval(np.asarray(result.bootstrap_distribution)))


def _percentile_interval(distribution: FloatArray) -> tuple[float | None, float | None]:
    """The percentile interval of a bootstrap distribution, its undefined (nan) resamples
    left out; bounds are resampled values (no interpolation towards an infinite one)."""
    defined = distribution[~np.isnan(distribution)].ravel()
    if not defined.size:
        return None, None
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(defined, [tail, 1 - tail], method="inverted_cdf")
    return _finite(float(low)), _finite(float(high))


def _mean(x: FloatArray, axis: int = -1) -> Any:
    return np.mean(x, axis=axis)


def _ratio_of_sums(numerator: FloatArray, denominator: FloatArray, axis: int = -1) -> Any:
    return np.sum(numerator, axis=axis) / np.sum(denominator, axis=axis)


def _mean_difference(x: FloatArray, y: FloatArray, axis: int = -1) -> Any:
    return np.mean(x - y, axis=axis)


def _relative_change(x: FloatArray, y: FloatArray, axis: int = -1) -> Any:
    base = np.mean(y, axis=axis)
    return (np.mean(x, axis=axis) - base) / base


def _interval(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., Any],
    *,
    count: int,
    total: int,
    method: IntervalMethod,
) -> Interval:
    value, low, high = bootstrap_interval(samples, statistic)
    if value is None:
        return Interval.empty(total=total, count=count)
    return Interval(value=value, low=low, high=high, count=count, total=total, method=method)


# ---------------------------------------------------------------------------- one run


def scored_sessions(sessions: Iterable[SessionTrace]) -> list[SessionTrace]:
    """The episodes every figure counts: all but harness errors (not the agent's fault)."""
    return [s for s in sessions if s.outcome != HARNESS_ERROR]


def _by_case(sessions: Iterable[SessionTrace]) -> dict[str, list[SessionTrace]]:
    grouped: dict[str, list[SessionTrace]] = {}
    for session in sessions:
        grouped.setdefault(session.case_id, []).append(session)
    return grouped


def episode_mean(
    sessions: Sequence[SessionTrace], quantity: Callable[[SessionTrace], float]
) -> Interval:
    """The mean of `quantity` over `sessions` (episodes), with a bootstrap over their
    cases of sum / count (a case's trials resampled together); count = total = episodes."""
    if not sessions:
        return Interval.empty()
    grouped = _by_case(sessions)
    sums = [sum(quantity(s) for s in group) for group in grouped.values()]
    counts = [float(len(group)) for group in grouped.values()]
    return _interval(
        (sums, counts),
        _ratio_of_sums,
        count=len(sessions),
        total=len(sessions),
        method="bootstrap",
    )


def _pass_hat_k(scored: Sequence[SessionTrace]) -> dict[int, Interval]:
    per_case = {
        case: [passes(s, PASS_KEY) for s in group] for case, group in _by_case(scored).items()
    }
    most = max((len(results) for results in per_case.values()), default=0)
    figures: dict[int, Interval] = {}
    for k in range(1, most + 1):
        estimates = [
            math.comb(sum(results), k) / math.comb(len(results), k)
            for results in per_case.values()
            if len(results) >= k
        ]
        figures[k] = _interval(
            (estimates,),
            _mean,
            count=len(estimates),
            total=len(per_case),
            method="bootstrap",
        )
    return figures


def _cost_per_success(scored: Sequence[SessionTrace]) -> tuple[float | None, Interval | None]:
    if any(s.cost_usd is None for s in scored):
        return None, None
    total_cost = float(sum(s.cost_usd or 0.0 for s in scored))
    passed = sum(passes(s, PASS_KEY) for s in scored)
    if not passed:
        return total_cost, Interval.empty(total=len(scored))
    grouped = _by_case(scored)
    costs = [sum(s.cost_usd or 0.0 for s in group) for group in grouped.values()]
    wins = [float(sum(passes(s, PASS_KEY) for s in group)) for group in grouped.values()]
    return total_cost, _interval(
        (costs, wins), _ratio_of_sums, count=passed, total=len(scored), method="bootstrap"
    )


def _wilson_by(
    scored: Sequence[SessionTrace], key: Callable[[SessionTrace], str]
) -> dict[str, Interval]:
    grouped: dict[str, list[SessionTrace]] = {}
    for session in scored:
        grouped.setdefault(key(session), []).append(session)
    return {
        name: Interval.wilson(sum(passes(s, PASS_KEY) for s in group), len(group))
        for name, group in sorted(grouped.items())
    }


def _tokens(session: SessionTrace) -> float:
    return float(session.total_tokens)


def in_start_order(sessions: Sequence[SessionTrace]) -> list[SessionTrace]:
    """Episodes in the order they started (ties keep file order)."""
    return sorted(sessions, key=lambda s: s.started_at)


def phase_windows(
    sessions: Sequence[SessionTrace], phase_size: int = DEFAULT_PHASE_SIZE
) -> list[tuple[int, int, list[SessionTrace]]]:
    """The run's episodes in start order cut into windows of `phase_size` (the last may
    be shorter), as (1-based phase index, 0-based offset of its first episode, its
    episodes). Raises ValueError when `phase_size` < 1."""
    if phase_size < 1:
        raise ValueError(f"a phase holds at least one episode (got {phase_size})")
    ordered = in_start_order(sessions)
    return [
        (index, start, ordered[start : start + phase_size])
        for index, start in enumerate(range(0, len(ordered), phase_size), start=1)
    ]


def phases_of(
    sessions: Sequence[SessionTrace], phase_size: int = DEFAULT_PHASE_SIZE
) -> list[Phase]:
    """Each window of `phase_windows`: its reliability, mean reward and tokens, cue hit
    rate, lanes and guidance. Raises ValueError when `phase_size` < 1."""
    result = []
    for index, start, window in phase_windows(sessions, phase_size):
        scored = scored_sessions(window)
        lanes, guidance, _ = lane_mix(window)
        cue = cue_hit_rate(window)
        result.append(
            Phase(
                index=index,
                first_episode=start + 1,
                last_episode=start + len(window),
                episodes=len(window),
                reliability=Interval.wilson(sum(passes(s, PASS_KEY) for s in scored), len(scored)),
                mean_reward=episode_mean(scored, lambda s: s.score),
                mean_tokens=episode_mean(scored, _tokens),
                cue_hit=Interval.of_rate(cue) if cue is not None else None,
                lanes=lanes,
                guidance_messages=guidance,
            )
        )
    return result


def entry_effects(
    sessions: Sequence[SessionTrace],
    playbooks: PlaybookExport | None = None,
    limit: int = TOP_ENTRIES,
    baseline_scores: Mapping[str, float] | None = None,
) -> list[EntryEffect]:
    """Per playbook entry the traces retrieved: the mean reward of the scored episodes that
    injected it, against, with `baseline_scores` (case id -> the baseline run's mean
    score), the baseline's reward on the same cases (paired: the same tasks without the
    entry, so the delta is the reward the entry moved); without a baseline, against the
    episodes that retrieved it without injecting it (not paired: those tasks fit it less,
    so read that delta with care). The `limit` largest |delta| first, then entries
    without a delta (one side empty) by episodes with them. Texts and levels come from
    `playbooks` when given (levels otherwise from the traces)."""
    with_rewards: dict[str, list[float]] = {}
    without_rewards: dict[str, list[float]] = {}
    levels: dict[str, str] = {}
    for session in scored_sessions(sessions):
        for retrieval in session.crm_context.playbooks_retrieved:
            if retrieval.level is not None:
                levels[retrieval.entry_id] = retrieval.level
            if baseline_scores is not None:
                if retrieval.injected and session.case_id in baseline_scores:
                    with_rewards.setdefault(retrieval.entry_id, []).append(session.score)
                    without_rewards.setdefault(retrieval.entry_id, []).append(
                        baseline_scores[session.case_id]
                    )
                continue
            side = with_rewards if retrieval.injected else without_rewards
            side.setdefault(retrieval.entry_id, []).append(session.score)
    known = {item.entry.entry_id: item.entry for item in playbooks.entries} if playbooks else {}
    effects = []
    for entry_id in sorted(set(with_rewards) | set(without_rewards)):
        on = with_rewards.get(entry_id, [])
        off = without_rewards.get(entry_id, [])
        reward_with = statistics.fmean(on) if on else None
        reward_without = statistics.fmean(off) if off else None
        entry = known.get(entry_id)
        effects.append(
            EntryEffect(
                entry_id=entry_id,
                text=entry.action.text if entry is not None else None,
                level=entry.level if entry is not None else levels.get(entry_id),
                episodes_with=len(on),
                episodes_without=len(off),
                reward_with=reward_with,
                reward_without=reward_without,
                delta=(
                    reward_with - reward_without
                    if reward_with is not None and reward_without is not None
                    else None
                ),
            )
        )
    effects.sort(
        key=lambda e: (
            e.delta is None,
            -abs(e.delta) if e.delta is not None else 0.0,
            -e.episodes_with,
            e.entry_id,
        )
    )
    return effects[:limit]


def _config(info: RunInfo | None) -> dict[str, Any]:
    return info.config if info is not None else {}


def _learning(
    info: RunInfo | None, sessions: Sequence[SessionTrace]
) -> tuple[str | None, str | None]:
    """(mode, control) from run.json's config, else from what the traces show."""
    learning = _config(info).get("learning")
    if isinstance(learning, dict) and isinstance(learning.get("mode"), str):
        mode = str(learning["mode"])
        control = learning.get("control", "retrieval") if mode != "off" else None
        return mode, str(control) if control is not None else None
    if info is not None and info.config:
        return "off", None  # a config without a learning section predates the loop
    modes = {s.crm_context.learning_mode for s in sessions} - {None}
    if not modes:
        return None, None
    shuffled = any(
        r.cue_match == "shuffled" for s in sessions for r in s.crm_context.playbooks_retrieved
    )
    return ",".join(sorted(str(m) for m in modes)), "shuffled" if shuffled else "retrieval"


def _split(info: RunInfo | None, sessions: Sequence[SessionTrace]) -> str | None:
    splits = sorted({s.crm_context.split for s in sessions})
    if len(splits) == 1:
        return splits[0]
    configured = _config(info).get("split")
    if isinstance(configured, str) and not _config(info).get("cases"):
        return configured
    return ",".join(splits) or None


def run_metrics(
    run: RunData,
    phase_size: int = DEFAULT_PHASE_SIZE,
    playbooks: PlaybookExport | None = None,
    baseline: RunData | None = None,
) -> RunMetrics:
    """Every learning metric of one run, from its traces (docs/experiment.md).

    Harness errors count in `episodes` and the lane/guidance tallies, never in a pass
    rate, mean or cost. Raises ValueError when `phase_size` < 1.
    """
    sessions = run.sessions
    scored = scored_sessions(sessions)
    run_ids = sorted({s.run_id for s in sessions})
    warnings_ = []
    if len(run_ids) > 1:
        warnings_.append(f"the traces mix {len(run_ids)} runs: {', '.join(run_ids)}")
    mode, control = _learning(run.info, sessions)
    lanes, guidance, _ = lane_mix(sessions)
    cue = cue_hit_rate(sessions)
    adoption = adoption_rate(sessions)
    cost, per_success = _cost_per_success(scored)
    return RunMetrics(
        name=run.name,
        run_id=(run.info.run_id if run.info and run.info.run_id else None) or ",".join(run_ids),
        split=_split(run.info, sessions),
        learning_mode=mode,
        control=control,
        episodes=len(sessions),
        scored=len(scored),
        reliability={
            key: Interval.wilson(sum(passes(s, key) for s in scored), len(scored))
            for key in THRESHOLD_KEYS
        },
        pass_hat_k=_pass_hat_k(scored),
        mean_reward=episode_mean(scored, lambda s: s.score),
        mean_tokens=episode_mean(scored, _tokens),
        cost_usd=cost,
        cost_per_success=per_success,
        cue_hit=Interval.of_rate(cue) if cue is not None else None,
        adoption=Interval.of_rate(adoption) if adoption is not None else None,
        lanes=lanes,
        guidance_messages=guidance,
        by_category=_wilson_by(scored, lambda s: s.crm_context.task_category),
        by_family=_wilson_by(scored, lambda s: s.crm_context.failure_family or SUCCESS_PATH),
        phases=phases_of(sessions, phase_size),
        top_entries=entry_effects(
            sessions,
            playbooks,
            baseline_scores=(
                {case: figures.score for case, figures in case_figures(baseline.sessions).items()}
                if baseline is not None
                else None
            ),
        ),
        phase_size=phase_size,
        cases=len(_by_case(scored)),
        warnings=warnings_,
    )


# ---------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class CaseFigures:
    """One case's figures in one run: its scored trials averaged."""

    score: float
    tokens: float
    passed: float
    """Share of its trials that passed at 0.9."""


def case_figures(sessions: Iterable[SessionTrace]) -> dict[str, CaseFigures]:
    """Per case id with a scored episode: mean score, tokens and pass at 0.9."""
    return {
        case_id: CaseFigures(
            score=statistics.fmean(s.score for s in group),
            tokens=statistics.fmean(_tokens(s) for s in group),
            passed=statistics.fmean(float(passes(s, PASS_KEY)) for s in group),
        )
        for case_id, group in _by_case(scored_sessions(sessions)).items()
    }


def compare(run: RunData, baseline: RunData) -> Comparison:
    """`run` against `baseline`, paired by case over the cases both scored (each case's
    trials averaged first); intervals by paired bootstrap over those cases."""
    here = case_figures(run.sessions)
    there = case_figures(baseline.sessions)
    common = sorted(set(here) & set(there))
    n = len(common)
    if not n:
        return Comparison(
            run=run.name,
            baseline=baseline.name,
            cases=0,
            reward_delta=Interval.empty(),
            token_delta=Interval.empty(),
            reliability_delta=Interval.empty(),
            transfer=Interval.empty(),
        )

    def pair(field: str) -> tuple[list[float], list[float]]:
        return (
            [getattr(here[c], field) for c in common],
            [getattr(there[c], field) for c in common],
        )

    def paired(field: str, statistic: Callable[..., Any], count: int = n) -> Interval:
        return _interval(pair(field), statistic, count=count, total=n, method="paired_bootstrap")

    savings = [
        (there[c].tokens - here[c].tokens) / there[c].tokens for c in common if there[c].tokens > 0
    ]
    run_pass, base_pass = pair("passed")
    base_rate = statistics.fmean(base_pass)
    return Comparison(
        run=run.name,
        baseline=baseline.name,
        cases=n,
        reward_delta=paired("score", _mean_difference),
        token_delta=_interval(
            (savings,), _mean, count=len(savings), total=n, method="paired_bootstrap"
        ),
        reliability_delta=paired("passed", _mean_difference),
        transfer=(
            paired("passed", _relative_change)
            if base_rate > 0
            else Interval.empty(total=n, count=n)
        ),
        baseline_reliability=_interval((base_pass,), _mean, count=n, total=n, method="bootstrap"),
        run_reliability=_interval((run_pass,), _mean, count=n, total=n, method="bootstrap"),
    )


def learning_report(
    runs: Sequence[RunData],
    baseline: RunData | None = None,
    phase_size: int = DEFAULT_PHASE_SIZE,
    playbooks: PlaybookExport | None = None,
) -> LearningReport:
    """The metrics of `baseline` (first, when given and not among `runs`) and of every run,
    and each run's comparison with `baseline`. Raises ValueError when `phase_size` < 1."""
    everyone = list(runs)
    if baseline is not None and all(run is not baseline for run in everyone):
        everyone.insert(0, baseline)
    comparisons = (
        [compare(run, baseline) for run in runs if run is not baseline]
        if baseline is not None
        else []
    )
    return LearningReport(
        runs=[
            run_metrics(run, phase_size, playbooks, None if run is baseline else baseline)
            for run in everyone
        ],
        comparisons=comparisons,
        phase_size=phase_size,
    )


# ---------------------------------------------------------------------------- Markdown


def entry_effects_table(effects: Sequence[EntryEffect]) -> list[str]:
    """The Markdown table of playbook entries' effects on reward: id, level, episodes with
    and without the entry, mean reward each way and their difference (3 decimals), text."""
    return fmt.table(
        ["entry", "level", "with", "without", "reward with", "reward without", "delta", "text"],
        [
            [
                e.entry_id,
                e.level or "-",
                str(e.episodes_with),
                str(e.episodes_without),
                "-" if e.reward_with is None else f"{e.reward_with:.3f}",
                "-" if e.reward_without is None else f"{e.reward_without:.3f}",
                "-" if e.delta is None else f"{e.delta:+.3f}",
                e.text or "-",
            ]
            for e in effects
        ],
    )


def _learning_label(run: RunMetrics) -> str:
    if run.learning_mode in (None, "off"):
        return run.learning_mode or "-"
    if run.control == "shuffled":
        return f"{run.learning_mode} (shuffled control)"
    return run.learning_mode


def _lanes(lanes: dict[str, int]) -> str:
    return ", ".join(f"{lane} {count}" for lane, count in lanes.items()) or "-"


def render_markdown(report: LearningReport) -> str:
    """The report as Markdown: a summary table per run, the comparisons with the
    baseline, thresholds and pass^k, phases per run, and the entries that moved reward."""
    out = ["# Learning metrics", ""]
    out.append(
        "From the runs' traces only. Intervals are 95%: Wilson for rates, bootstrap over "
        f"cases (BCa, {BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}) for means, "
        "paired by case for comparisons. Harness errors are left out of every figure."
    )
    out += ["", "## Summary", ""]
    out += fmt.table(
        [
            "run",
            "split",
            "learning",
            "episodes",
            "reliability@0.9",
            "mean reward",
            "tokens / episode",
            "cue hit",
            "adoption",
            "cost per success",
        ],
        [
            [
                run.name,
                run.split or "-",
                _learning_label(run),
                str(run.episodes),
                fmt.rate(run.reliability.get(PASS_KEY)),
                fmt.score(run.mean_reward),
                fmt.number(run.mean_tokens),
                fmt.rate(run.cue_hit),
                fmt.rate(run.adoption),
                fmt.money(run.cost_per_success),
            ]
            for run in report.runs
        ],
    )
    if report.comparisons:
        out += ["", "## Against the baseline (paired by case)", ""]
        out += fmt.table(
            [
                "run",
                "baseline",
                "cases",
                "reward delta",
                "token delta (fewer)",
                "reliability delta",
                "transfer (relative)",
            ],
            [
                [
                    c.run,
                    c.baseline,
                    str(c.cases),
                    fmt.points(c.reward_delta, n=True),
                    fmt.relative(c.token_delta, n=True),
                    fmt.points(c.reliability_delta, n=True),
                    fmt.relative(c.transfer, n=True),
                ]
                for c in report.comparisons
            ],
        )
    out += ["", "## Reliability by threshold and pass^k", ""]
    most_k = max((max(run.pass_hat_k, default=0) for run in report.runs), default=0)
    ks = list(range(2, most_k + 1))
    out += fmt.table(
        ["run", *(f"reliability@{key}" for key in THRESHOLD_KEYS), *(f"pass^{k}" for k in ks)],
        [
            [
                run.name,
                *(fmt.rate(run.reliability.get(key)) for key in THRESHOLD_KEYS),
                *(fmt.score(run.pass_hat_k.get(k)) for k in ks),
            ]
            for run in report.runs
        ],
    )
    for run in report.runs:
        out += ["", f"## Phases: {run.name} ({report.phase_size} episodes each)", ""]
        out += fmt.table(
            [
                "phase",
                "episodes",
                "reliability@0.9",
                "mean reward",
                "tokens / episode",
                "cue hit",
                "lanes",
                "guidance",
            ],
            [
                [
                    str(phase.index),
                    f"{phase.first_episode}-{phase.last_episode}",
                    fmt.rate(phase.reliability),
                    fmt.score(phase.mean_reward),
                    fmt.number(phase.mean_tokens),
                    fmt.rate(phase.cue_hit),
                    _lanes(phase.lanes),
                    str(phase.guidance_messages),
                ]
                for phase in run.phases
            ],
        )
    for run in report.runs:
        if not run.top_entries:
            continue
        out += ["", f"## Playbook entries that moved reward: {run.name}", ""]
        out += entry_effects_table(run.top_entries)
    notes = [f"{run.name}: {w}" for run in report.runs for w in run.warnings]
    if notes:
        out += ["", "## Warnings", "", *(f"- {note}" for note in notes)]
    return "\n".join(out) + "\n"
