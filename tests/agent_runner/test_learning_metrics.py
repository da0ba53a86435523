"""The learning metrics (agent_runner.reports.learning_metrics): each figure against values
computed here from the synthetic traces it is given, `crmbench learning-report` as a user
runs it, and the acceptance check that the metrics recover the simulated student's
configured truth within their intervals on real runs."""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from scipy.stats import bootstrap
from typer.testing import CliRunner

from agent_runner.learning.simulated_teacher import SimulatedTeacherConfig
from agent_runner.learning.simulated_teacher import (
    default_config_path as teacher_config_path,
)
from agent_runner.reports.learning_metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Interval,
    LearningReport,
    RunData,
    bootstrap_interval,
    compare,
    entry_effects,
    learning_report,
    load_run,
    phases_of,
    render_markdown,
    run_metrics,
)
from agent_runner.reports.reading import ResultsError
from agent_runner.reports.statistics import wilson_interval
from agent_runner.simulated.config import SimulatedLLMConfig
from agent_runner.simulated.config import default_config_path as student_config_path
from agent_runner.simulated.policy import expected_pass_probability
from crmbench.learning_report_cli import register
from crmbench_contracts.paths import CONFIG_DIR
from crmbench_contracts.playbooks import (
    Action,
    Cue,
    ExportedEntry,
    PlaybookContent,
    PlaybookExport,
)
from crmbench_contracts.traces import (
    LaneDecision,
    PlaybookRetrieval,
    SessionTrace,
)
from tests.agent_runner.conftest import RunServices
from tests.agent_runner.trace_factory import STARTED, make_session, write_run

CRMBENCH = str(Path(sys.executable).parent / "crmbench")


def at(session: SessionTrace, second: int) -> SessionTrace:
    """The session, started `second` seconds after the factory's start."""
    return session.model_copy(update={"started_at": STARTED + timedelta(seconds=second)})


def with_retrievals(
    session: SessionTrace,
    retrievals: Sequence[PlaybookRetrieval] = (),
    *,
    mode: str = "on",
    adopted: Sequence[str] = (),
    lane: str | None = None,
    guidance: int = 0,
) -> SessionTrace:
    context = session.crm_context.model_copy(
        update={
            "learning_mode": mode,
            "playbooks_retrieved": list(retrievals),
            "playbooks_adopted": list(adopted),
            "lane": (
                LaneDecision(lane=lane, reason="test", source="rule")  # type: ignore[arg-type]
                if lane
                else None
            ),
            "trajectory": [{"kind": "guidance", "text": "g"}] * guidance,
        }
    )
    return session.model_copy(update={"crm_context": context})


def run_of(sessions: Sequence[SessionTrace], name: str = "run") -> RunData:
    return RunData(name=name, path=Path(name), info=None, sessions=list(sessions))


def scipy_bca(samples: Sequence[Sequence[float]], statistic: object) -> tuple[float, float]:
    """The interval scipy gives directly, with the documented settings."""
    result = bootstrap(
        tuple(np.asarray(s, dtype=float) for s in samples),
        statistic,
        paired=len(samples) > 1,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="BCa",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def ratio_of_sums(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(a, axis=axis) / np.sum(b, axis=axis)  # type: ignore[no-any-return]


def relative_change(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    base = np.mean(y, axis=axis)
    return (np.mean(x, axis=axis) - base) / base  # type: ignore[no-any-return]


# Scores of a two-trial run: case -> its trials' scores.
SCORES = {
    "A": [1.0, 1.0],
    "B": [1.0, 0.5],
    "C": [0.85, 0.95],
    "D": [0.0, 0.75],
    "E": [0.92, 0.2],
    "F": [1.0, 0.0],
}
TOKENS = {"A": 1000, "B": 2000, "C": 1500, "D": 4000, "E": 900, "F": 3000}


def two_trial_run(run_id: str = "run-1") -> list[SessionTrace]:
    sessions = [
        make_session(case, trial, score, run_id=run_id, student_tokens=(TOKENS[case], 100 * trial))
        for case, scores in SCORES.items()
        for trial, score in enumerate(scores)
    ]
    return [at(s, i) for i, s in enumerate(sessions)]


# ---------------------------------------------------------------------------- one run


def test_reliability_is_a_wilson_rate_over_scored_episodes_at_each_threshold() -> None:
    sessions = [
        *two_trial_run(),
        make_session("G", 0, 0.0, outcome="harness_error", error="the CRM API failed"),
    ]
    metrics = run_metrics(run_of(sessions))
    scored = [s for s in sessions if s.outcome != "harness_error"]
    assert (metrics.episodes, metrics.scored) == (len(sessions), len(scored))
    for key in ("0.7", "0.8", "0.9"):
        passed = sum(s.score >= float(key) for s in scored)
        low, high = wilson_interval(passed, len(scored))
        assert metrics.reliability[key] == Interval(
            value=passed / len(scored),
            low=low,
            high=high,
            count=passed,
            total=len(scored),
            method="wilson",
        )


def test_pass_hat_k_is_the_mean_of_per_case_combinations_with_a_bootstrap_over_cases() -> None:
    metrics = run_metrics(run_of(two_trial_run()))
    assert sorted(metrics.pass_hat_k) == [1, 2]
    for k in (1, 2):
        per_case = [
            math.comb(sum(score >= 0.9 for score in scores), k) / math.comb(len(scores), k)
            for scores in SCORES.values()
        ]
        figure = metrics.pass_hat_k[k]
        assert figure.value == pytest.approx(statistics.fmean(per_case))
        assert (figure.count, figure.total, figure.method) == (
            len(SCORES),
            len(SCORES),
            "bootstrap",
        )
        low, high = scipy_bca([per_case], lambda x, axis=-1: np.mean(x, axis=axis))
        assert (figure.low, figure.high) == pytest.approx((low, high))


def test_means_resample_cases_with_their_trials_together() -> None:
    sessions = two_trial_run()
    metrics = run_metrics(run_of(sessions))
    scores = [s.score for s in sessions]
    assert metrics.mean_reward.value == pytest.approx(statistics.fmean(scores))
    assert metrics.mean_reward.count == metrics.mean_reward.total == len(sessions)
    sums = [sum(v) for v in SCORES.values()]
    counts = [len(v) for v in SCORES.values()]
    low, high = scipy_bca([sums, counts], ratio_of_sums)
    assert (metrics.mean_reward.low, metrics.mean_reward.high) == pytest.approx((low, high))
    tokens = [s.total_tokens for s in sessions]
    assert metrics.mean_tokens.value == pytest.approx(statistics.fmean(tokens))
    assert metrics.mean_tokens.low is not None and metrics.mean_tokens.high is not None
    assert metrics.mean_tokens.low < metrics.mean_tokens.value < metrics.mean_tokens.high


def test_cost_per_success_is_total_cost_over_passes() -> None:
    sessions = [
        make_session(case, 0, score, cost_usd=cost)
        for case, score, cost in [("A", 1.0, 0.02), ("B", 0.5, 0.05), ("C", 0.95, 0.01)]
    ]
    metrics = run_metrics(run_of(sessions))
    total = sum(s.cost_usd or 0.0 for s in sessions)
    passed = sum(s.score >= 0.9 for s in sessions)
    assert metrics.cost_usd == pytest.approx(total)
    assert metrics.cost_per_success is not None
    assert metrics.cost_per_success.value == pytest.approx(total / passed)
    assert metrics.cost_per_success.count == passed
    # An unpriced episode: no cost figure at all, rather than a wrong one.
    unpriced = run_metrics(run_of([*sessions, make_session("D", 0, 1.0, cost_usd=None)]))
    assert unpriced.cost_usd is None and unpriced.cost_per_success is None
    # Nothing passed: a cost, but no cost per success.
    failing = run_metrics(run_of([make_session("A", 0, 0.1, cost_usd=0.03)]))
    assert failing.cost_per_success is not None and failing.cost_per_success.value is None


def test_constant_values_have_their_value_as_interval() -> None:
    sessions = [make_session(c, 0, 1.0, student_tokens=(500, 0)) for c in "ABCDE"]
    metrics = run_metrics(run_of(sessions))
    assert (metrics.mean_reward.value, metrics.mean_reward.low, metrics.mean_reward.high) == (
        1.0,
        1.0,
        1.0,
    )
    assert metrics.mean_tokens.low == metrics.mean_tokens.high == 500.0
    # A degenerate BCa (every resample alike but the values not constant) falls back.
    value, low, high = bootstrap_interval(
        ([0.2, 0.4, 0.9], [0.2, 0.4, 0.9]), lambda a, b, axis=-1: np.mean(a - b, axis=axis)
    )
    assert (value, low, high) == (0.0, 0.0, 0.0)
    # Paired arrays alike: a relative change of 0 in every resample, BCa degenerate.
    same = [0.0, 1.0, 1.0, 0.5]
    assert bootstrap_interval((same, same), relative_change) == (0.0, 0.0, 0.0)
    # Cost per success where one case of ten passed: resamples without it divide by zero,
    # so the upper bound is unbounded (None) and the lower one a resampled value.
    costs, wins = [1.0] * 10, [1.0] + [0.0] * 9
    value, low, high = bootstrap_interval((costs, wins), ratio_of_sums)
    assert value == sum(costs) / sum(wins) and high is None
    assert low is not None and low < value and low in {10 / k for k in range(1, 11)}
    # Deterministic: the same data gives the same interval every time.
    data = ([0.1, 0.5, 0.7, 0.2, 0.9, 0.4],)
    assert bootstrap_interval(data, np.mean) == bootstrap_interval(data, np.mean)


def test_cue_hit_adoption_lanes_and_guidance_come_from_the_retrievals() -> None:
    def hit(entry: str, injected: bool = True, level: str = "domain") -> PlaybookRetrieval:
        return PlaybookRetrieval(
            entry_id=entry, cue_match="semantic", similarity=0.8, injected=injected, level=level
        )

    sessions = [
        with_retrievals(make_session("A"), [hit("e1"), hit("e2")], adopted=["e1"], lane="auto"),
        with_retrievals(make_session("B"), [hit("e1")], adopted=["e1"], lane="coach", guidance=2),
        with_retrievals(make_session("C"), [hit("u", level="universal")], lane="auto"),
        with_retrievals(make_session("D"), [], lane="paired", guidance=1),
    ]
    metrics = run_metrics(run_of(sessions))
    # Cue hits: episodes with a retrieval below the universal level (A, B) / all four.
    assert metrics.cue_hit is not None
    assert (metrics.cue_hit.count, metrics.cue_hit.total) == (2, 4)
    assert metrics.cue_hit.value == pytest.approx(2 / 4)
    # Adoption: retrieved entries injected and followed (A's e1, B's e1) / retrieved (4).
    assert metrics.adoption is not None
    assert (metrics.adoption.count, metrics.adoption.total) == (2, 4)
    assert metrics.lanes == {"auto": 2, "coach": 1, "paired": 1}
    assert metrics.guidance_messages == 3
    # A run without learning has neither rate.
    plain = run_metrics(run_of([make_session("A")]))
    assert plain.cue_hit is None and plain.adoption is None


def test_phases_cut_episodes_in_start_order() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0]
    # Written out of order: the phases follow started_at, not the file.
    order = [3, 0, 6, 1, 5, 2, 4]
    sessions = [at(make_session(f"C{i}", 0, scores[i]), order[i]) for i in range(len(scores))]
    phases = phases_of(sessions, phase_size=3)
    by_start = [scores[i] for i in sorted(range(len(scores)), key=lambda i: order[i])]
    windows = [by_start[0:3], by_start[3:6], by_start[6:7]]
    assert [(p.index, p.first_episode, p.last_episode, p.episodes) for p in phases] == [
        (1, 1, 3, 3),
        (2, 4, 6, 3),
        (3, 7, 7, 1),
    ]
    for phase, window in zip(phases, windows, strict=True):
        passed = sum(score >= 0.9 for score in window)
        assert (phase.reliability.count, phase.reliability.total) == (passed, len(window))
        assert phase.mean_reward.value == pytest.approx(statistics.fmean(window))
    with pytest.raises(ValueError):
        phases_of(sessions, phase_size=0)


def test_phase_cue_hits_and_lanes_are_counted_per_window() -> None:
    hit = PlaybookRetrieval(entry_id="e", cue_match="pattern", injected=True, level="domain")
    sessions = [
        at(with_retrievals(make_session(f"C{i}"), [hit] if i >= 2 else [], lane="auto"), i)
        for i in range(4)
    ]
    first, second = phases_of(sessions, phase_size=2)
    assert first.cue_hit is not None and second.cue_hit is not None
    assert (first.cue_hit.count, second.cue_hit.count) == (0, 2)
    assert first.lanes == second.lanes == {"auto": 2}


def test_top_entries_rank_reward_with_against_retrieved_without() -> None:
    def retrieval(entry: str, injected: bool) -> PlaybookRetrieval:
        return PlaybookRetrieval(entry_id=entry, cue_match="semantic", injected=injected)

    plan = {  # entry -> [(score, injected)]
        "small": [(1.0, True), (0.9, False)],
        "big": [(1.0, True), (1.0, True), (0.2, False)],
        "harmful": [(0.3, True), (1.0, False), (0.8, False)],
        "never-withheld": [(1.0, True)],
    }
    sessions = [
        with_retrievals(make_session(f"{entry}-{i}", 0, score), [retrieval(entry, injected)])
        for entry, episodes in plan.items()
        for i, (score, injected) in enumerate(episodes)
    ]
    content = PlaybookContent(
        audience="student",
        level="workflow",
        cue=Cue(text="a deal with a currency sign"),
        action=Action(text="Send amounts as plain numbers."),
        expected_effect="No refusal.",
    )
    exported = ExportedEntry.new(content, datetime(2026, 1, 1, tzinfo=UTC))
    big_id = exported.entry.entry_id
    sessions = [
        s.model_copy(
            update={
                "crm_context": s.crm_context.model_copy(
                    update={
                        "playbooks_retrieved": [
                            r.model_copy(update={"entry_id": big_id}) if r.entry_id == "big" else r
                            for r in s.crm_context.playbooks_retrieved
                        ]
                    }
                )
            }
        )
        for s in sessions
    ]
    export = PlaybookExport(exported_at=datetime(2026, 1, 2, tzinfo=UTC), entries=[exported])
    effects = entry_effects(sessions, export)

    def delta(entry: str) -> float:
        with_ = [score for score, injected in plan[entry] if injected]
        without = [score for score, injected in plan[entry] if not injected]
        return statistics.fmean(with_) - statistics.fmean(without)

    expected = sorted(["small", "big", "harmful"], key=lambda e: -abs(delta(e)))
    ids = [big_id if e == "big" else e for e in expected]
    assert [e.entry_id for e in effects] == [*ids, "never-withheld"]
    for effect, name in zip(effects, expected, strict=False):
        assert effect.delta == pytest.approx(delta(name))
        assert effect.episodes_with == sum(injected for _, injected in plan[name])
    big = next(e for e in effects if e.entry_id == big_id)
    assert (big.text, big.level) == ("Send amounts as plain numbers.", "workflow")
    assert effects[-1].delta is None and effects[-1].text is None


def test_with_a_baseline_an_entry_is_measured_against_the_same_cases_without_it() -> None:
    def retrieval(entry: str, injected: bool) -> PlaybookRetrieval:
        return PlaybookRetrieval(entry_id=entry, cue_match="semantic", injected=injected)

    # entry -> [(case, score here, injected)]; the baseline scored every case once.
    plan = {
        "helps": [("A", 1.0, True), ("B", 1.0, True), ("C", 0.2, False)],
        "hurts": [("D", 0.5, True), ("E", 1.0, False)],
    }
    baseline_scores = {"A": 0.4, "B": 1.0, "C": 0.9, "D": 1.0, "E": 0.7}
    sessions = [
        with_retrievals(make_session(case, 0, score), [retrieval(entry, injected)])
        for entry, episodes in plan.items()
        for case, score, injected in episodes
    ]
    effects = {e.entry_id: e for e in entry_effects(sessions, baseline_scores=baseline_scores)}
    for entry, episodes in plan.items():
        injected = [(case, score) for case, score, used in episodes if used]
        with_ = statistics.fmean(score for _, score in injected)
        without = statistics.fmean(baseline_scores[case] for case, _ in injected)
        assert effects[entry].delta == pytest.approx(with_ - without)
        # Retrieved-but-not-injected episodes play no part when a baseline pairs them.
        assert effects[entry].episodes_without == len(injected)


# ---------------------------------------------------------------------------- comparisons


def test_comparison_pairs_common_cases_and_averages_their_trials() -> None:
    baseline = two_trial_run("base")
    # The run: one trial per case, a case the baseline lacks, and D missing.
    run_scores = {"A": 1.0, "B": 1.0, "C": 0.95, "E": 0.95, "F": 0.5, "Z": 1.0}
    run_tokens = {"A": 600, "B": 1000, "C": 1500, "E": 300, "F": 2000, "Z": 100}
    run = [
        make_session(c, 0, score, run_id="run", student_tokens=(run_tokens[c], 0))
        for c, score in run_scores.items()
    ]
    comparison = compare(run_of(run, "learn"), run_of(baseline, "base"))
    common = sorted(set(SCORES) & set(run_scores))
    assert comparison.cases == len(common)

    def base_mean(case: str, value: object) -> float:
        return statistics.fmean(
            float(value(s))  # type: ignore[operator]
            for s in baseline
            if s.case_id == case
        )

    reward = [run_scores[c] - base_mean(c, lambda s: s.score) for c in common]
    passes = [float(run_scores[c] >= 0.9) - base_mean(c, lambda s: s.score >= 0.9) for c in common]
    savings = [
        (base_mean(c, lambda s: s.total_tokens) - run_tokens[c])
        / base_mean(c, lambda s: s.total_tokens)
        for c in common
    ]
    assert comparison.reward_delta.value == pytest.approx(statistics.fmean(reward))
    assert comparison.reliability_delta.value == pytest.approx(statistics.fmean(passes))
    assert comparison.token_delta.value == pytest.approx(statistics.fmean(savings))
    base_rate = statistics.fmean(base_mean(c, lambda s: s.score >= 0.9) for c in common)
    run_rate = statistics.fmean(float(run_scores[c] >= 0.9) for c in common)
    assert comparison.transfer is not None
    assert comparison.transfer.value == pytest.approx((run_rate - base_rate) / base_rate)
    for figure in (comparison.reward_delta, comparison.reliability_delta, comparison.transfer):
        assert figure.method == "paired_bootstrap" and figure.total == len(common)
        assert figure.low is not None and figure.high is not None
        assert figure.low <= figure.value <= figure.high  # type: ignore[operator]
    # The reliability delta's interval is the paired bootstrap of the case pairs.
    run_pass = [float(run_scores[c] >= 0.9) for c in common]
    base_pass = [base_mean(c, lambda s: s.score >= 0.9) for c in common]
    low, high = scipy_bca([run_pass, base_pass], lambda x, y, axis=-1: np.mean(x - y, axis=axis))
    assert (comparison.reliability_delta.low, comparison.reliability_delta.high) == pytest.approx(
        (low, high)
    )


def test_transfer_is_undefined_against_a_baseline_that_passes_nothing() -> None:
    baseline = [make_session(c, 0, 0.0, run_id="b") for c in "ABC"]
    run = [make_session(c, 0, 1.0, run_id="r") for c in "ABC"]
    comparison = compare(run_of(run), run_of(baseline))
    assert comparison.transfer is not None and comparison.transfer.value is None
    assert comparison.reliability_delta.value == 1.0
    # No case in common: nothing to compare, no exception.
    disjoint = compare(run_of([make_session("X", 0, 1.0)]), run_of(baseline))
    assert disjoint.cases == 0 and disjoint.reward_delta.value is None


def test_report_puts_the_baseline_first_and_compares_every_run_with_it() -> None:
    base, one, two = (
        run_of(two_trial_run(name), name) for name in ("baseline", "learn", "transfer")
    )
    report = learning_report([one, two], base, phase_size=4)
    assert [r.name for r in report.runs] == ["baseline", "learn", "transfer"]
    assert [(c.run, c.baseline) for c in report.comparisons] == [
        ("learn", "baseline"),
        ("transfer", "baseline"),
    ]
    assert report.phase_size == 4
    assert all(len(r.phases) == math.ceil(r.episodes / 4) for r in report.runs)
    assert learning_report([one]).comparisons == []


# ---------------------------------------------------------------------------- reading and CLI


def test_load_run_keeps_the_run_of_its_run_json(tmp_path: Path) -> None:
    sessions = [*two_trial_run("mine"), make_session("X", 0, 1.0, run_id="other")]
    write_run(tmp_path / "learn", sessions, {"run_id": "mine", "config": {"split": "eval"}})
    run = load_run(tmp_path / "learn")
    assert run.name == "learn"
    assert {s.run_id for s in run.sessions} == {"mine"}
    assert run_metrics(run).run_id == "mine"
    with pytest.raises(ResultsError) as missing:
        load_run(tmp_path / "nowhere")
    assert missing.value.code == "not_found"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sessions.jsonl").write_text("")
    with pytest.raises(ResultsError) as empty:
        load_run(tmp_path / "empty")
    assert empty.value.code == "empty_run"


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop", hidden=True)(lambda: None)  # a group, so the command name is needed
    return app


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_learning_report_command_prints_markdown_and_json(tmp_path: Path, cli: typer.Typer) -> None:
    write_run(tmp_path / "baseline", two_trial_run("b"), {"run_id": "b"})
    write_run(tmp_path / "learn", two_trial_run("l"), {"run_id": "l"})
    code, out, _ = invoke(
        cli, "learning-report", str(tmp_path / "learn"), "--baseline", str(tmp_path / "baseline")
    )
    assert code == 0, out
    assert "## Summary" in out and "## Against the baseline" in out
    assert "## Phases: learn" in out and "## Phases: baseline" in out
    summary = out.split("## Summary")[1]
    assert "| learn |" in summary and "| baseline |" in summary
    code, out, _ = invoke(
        cli,
        "learning-report",
        str(tmp_path / "learn"),
        "--baseline",
        str(tmp_path / "baseline"),
        "--format",
        "json",
        "--phase",
        "5",
    )
    assert code == 0
    report = LearningReport.model_validate_json(out)
    assert report.phase_size == 5 and [r.name for r in report.runs] == ["baseline", "learn"]
    assert report.comparisons[0].reward_delta.value == 0.0
    target = tmp_path / "report" / "metrics.md"
    code, _, err = invoke(cli, "learning-report", str(tmp_path / "learn"), "--out", str(target))
    assert code == 0 and "wrote" in err
    assert target.read_text().startswith("# Learning metrics")


def test_learning_report_command_fails_clearly(tmp_path: Path, cli: typer.Typer) -> None:
    code, _, err = invoke(cli, "learning-report", str(tmp_path / "missing"))
    assert code == 1 and err.startswith("error: no run directory") and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sessions.jsonl").write_text("")
    code, _, err = invoke(cli, "learning-report", str(tmp_path / "empty"))
    assert code == 1 and "holds no session yet" in err
    (tmp_path / "not-a-run").mkdir()
    code, _, err = invoke(cli, "learning-report", str(tmp_path / "not-a-run"))
    assert code == 1 and "no sessions.jsonl" in err
    write_run(tmp_path / "ok", two_trial_run())
    code, _, err = invoke(cli, "learning-report", str(tmp_path / "ok"), "--phase", "0")
    assert code != 0 and "Traceback" not in err


def test_learning_report_command_names_entries_from_a_playbook_export(
    tmp_path: Path, cli: typer.Typer
) -> None:
    content = PlaybookContent(
        audience="student",
        level="domain",
        cue=Cue(text="an amount with a currency sign"),
        action=Action(text="Send amounts as plain numbers."),
        expected_effect="No refusal.",
    )
    exported = ExportedEntry.new(content, datetime(2026, 1, 1, tzinfo=UTC))
    export = PlaybookExport(exported_at=datetime(2026, 1, 2, tzinfo=UTC), entries=[exported])
    (tmp_path / "playbooks.json").write_text(export.model_dump_json(), encoding="utf-8")
    entry = exported.entry.entry_id
    sessions = [
        with_retrievals(
            make_session(case, 0, score),
            [PlaybookRetrieval(entry_id=entry, cue_match="pattern", injected=injected)],
        )
        for case, score, injected in [("A", 1.0, True), ("B", 0.4, False)]
    ]
    write_run(tmp_path / "learn", sessions)
    args = ["learning-report", str(tmp_path / "learn"), "--playbooks"]
    code, out, _ = invoke(cli, *args, str(tmp_path / "playbooks.json"))
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith(f"| {entry} "))
    assert "Send amounts as plain numbers." in row and "| domain |" in row
    assert f"{1.0 - 0.4:+.3f}" in row
    (tmp_path / "bad.json").write_text('{"entries": 3}', encoding="utf-8")
    code, _, err = invoke(cli, *args, str(tmp_path / "bad.json"))
    assert code == 1 and "is not a playbook export" in err and "Traceback" not in err


def test_markdown_shows_every_summary_figure() -> None:
    base, run = run_of(two_trial_run("b"), "baseline"), run_of(two_trial_run("l"), "learn")
    text = render_markdown(learning_report([run], base))
    header = next(line for line in text.splitlines() if line.startswith("| run | split"))
    for column in ("reliability@0.9", "mean reward", "tokens", "cue hit", "adoption", "cost"):
        assert column in header
    comparison = next(line for line in text.splitlines() if line.startswith("| run | baseline"))
    for column in ("reward delta", "token delta", "reliability delta", "transfer"):
        assert column in comparison
    rate = run_metrics(base).reliability["0.9"]
    assert f"({rate.count}/{rate.total})" in text


# ---------------------------------------------------------------------------- acceptance


def guidance_for_every_mistake() -> str:
    """The simulated teacher's lesson for the success path and every category, as a
    prompt section: text the simulated student counts as guidance for each mistake."""
    teacher = SimulatedTeacherConfig.from_yaml(teacher_config_path())
    lessons = [teacher.phrase(lesson).action for lesson in teacher.lessons()]
    return "\n\n## Lessons from earlier tasks\n\n" + "\n".join(f"- {text}" for text in lessons)


def start_run(services: RunServices, out: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CRMBENCH, "run", "--out", str(out), "--quiet", "--agent", "simulated", *args],
        env={**os.environ, **services.env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


ACCEPTANCE_CASES = 80


def test_metrics_recover_the_simulated_students_configured_truth(
    run_services: RunServices, tmp_path: Path
) -> None:
    """Two learning-off runs of the simulated student on the same eval cases, one with a
    prompt that addresses every mistake: each run's reliability@0.9 interval holds the
    mean configured pass probability of its cases, and the paired reliability delta's
    interval holds the difference of those means."""
    student = SimulatedLLMConfig.from_yaml(student_config_path())
    base_prompt = (CONFIG_DIR / "prompts" / "agent_system.md").read_text(encoding="utf-8")
    guided_prompt = base_prompt + guidance_for_every_mistake()
    (tmp_path / "guided.md").write_text(guided_prompt, encoding="utf-8")
    config = yaml.safe_load((CONFIG_DIR / "run.yaml").read_text(encoding="utf-8"))
    config["prompt"] = str(tmp_path / "guided.md")
    (tmp_path / "guided.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")

    common = ("--split", "eval", "--limit", str(ACCEPTANCE_CASES), "--concurrency", "8")
    processes = [
        start_run(run_services, tmp_path / "baseline", *common),
        start_run(
            run_services, tmp_path / "guided", *common, "--config", str(tmp_path / "guided.yaml")
        ),
    ]
    for process in processes:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output.decode()

    baseline = load_run(tmp_path / "baseline")
    guided = load_run(tmp_path / "guided")
    report = learning_report([guided], baseline)
    by_name = {run.name: run for run in report.runs}

    def expected(run: RunData, prompt: str) -> float:
        values = []
        for session in run.sessions:
            case = run_services.cases[session.case_id]
            addressed = student.rule_for(case).addressed_by(prompt)
            values.append(expected_pass_probability(case, student, guided=addressed))
        return statistics.fmean(values)

    cases = {s.case_id for s in baseline.sessions}
    assert len(cases) == ACCEPTANCE_CASES and cases == {s.case_id for s in guided.sessions}
    # The premise: the base prompt guides nothing, the guided one every case's mistake.
    assert not any(student.rule_for(run_services.cases[c]).addressed_by(base_prompt) for c in cases)
    assert all(student.rule_for(run_services.cases[c]).addressed_by(guided_prompt) for c in cases)

    truth = {"baseline": expected(baseline, base_prompt), "guided": expected(guided, guided_prompt)}
    for name, value in truth.items():
        figure = by_name[name].reliability["0.9"]
        assert figure.low is not None and figure.high is not None
        assert figure.low <= value <= figure.high, (name, value, figure)
    [comparison] = report.comparisons
    delta = comparison.reliability_delta
    assert comparison.cases == ACCEPTANCE_CASES and delta.method == "paired_bootstrap"
    assert delta.low is not None and delta.high is not None
    assert delta.low <= truth["guided"] - truth["baseline"] <= delta.high, (truth, delta)
    # The guidance must show: the delta's interval excludes zero.
    assert delta.low > 0, delta
