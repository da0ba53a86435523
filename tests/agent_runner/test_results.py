"""The run report: its statistics against hand-computed values, what it tolerates when
reading a run's traces, and `crmbench results` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agent_runner.reports.reading import ResultsError, load_sessions
from agent_runner.reports.rendering import render_report
from agent_runner.reports.statistics import build_report, load_report, pass_hat_k, wilson_interval
from crmbench.results_cli import register
from crmbench_contracts.rewards import JudgeScore
from crmbench_contracts.traces import SessionTrace
from tests.agent_runner.trace_factory import make_reward, make_session, write_run


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def invoke(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# ---------------------------------------------------------------------------- statistics


def test_wilson_interval_matches_hand_computed_values() -> None:
    # 8/10 with z = 1.96: centre (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half-width 1.41600 * sqrt(0.016 + 0.0096037) = 0.22658.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    # At the edges it stays in [0, 1] and is not degenerate (unlike p +- z*sqrt(p(1-p)/n)).
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # 95 of 100: the customer's target read off a 100-case run.
    assert wilson_interval(95, 100) == pytest.approx((0.8883, 0.9785), abs=1e-4)


def test_wilson_interval_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_pass_hat_k_averages_per_case_combinations() -> None:
    # Four cases of three trials: 3, 2, 1 and 0 passes.
    per_case = {
        "A": [True, True, True],
        "B": [True, True, False],
        "C": [False, True, False],
        "D": [False, False, False],
    }
    expected = {1: 0.5, 2: 1 / 3, 3: 0.25}  # (1 + 2/3 + 1/3 + 0)/4, (1 + 1/3)/4, 1/4
    for k, value in expected.items():
        estimate, cases = pass_hat_k(per_case, k)
        assert estimate == pytest.approx(value) and cases == 4
    # A case with fewer trials than k cannot be counted at that k.
    estimate, cases = pass_hat_k({**per_case, "E": [True]}, 2)
    assert estimate == pytest.approx(1 / 3) and cases == 4
    assert pass_hat_k(per_case, 4) == (None, 0)


def _three_trial_run() -> list[SessionTrace]:
    scores = {"A": [1.0, 1.0, 1.0], "B": [1.0, 0.95, 0.5], "C": [0.85, 1.0, 0.0], "D": [0.0] * 3}
    return [
        make_session(case, trial, score)
        for case, trial_scores in scores.items()
        for trial, score in enumerate(trial_scores)
    ]


def test_report_gives_pass_rates_with_intervals_and_pass_hat_k() -> None:
    report = build_report(_three_trial_run())
    at_09 = report.pass_rates["0.9"]
    assert (at_09.passed, at_09.total) == (6, 12)
    assert at_09.rate == pytest.approx(0.5)
    assert wilson_interval(6, 12) == pytest.approx((at_09.low, at_09.high))
    assert report.pass_rates["0.8"].passed == 7  # the 0.85 passes at 0.8, not at 0.9
    assert report.pass_rates["0.7"].passed == 7
    assert report.trials == 3 and report.cases == 4
    hat = {entry.k: entry.values["0.9"] for entry in report.pass_hat_k}
    assert hat == {1: pytest.approx(0.5), 2: pytest.approx(1 / 3), 3: pytest.approx(0.25)}
    assert report.mean_score == pytest.approx(sum(s.score for s in _three_trial_run()) / 12)


def test_single_trial_run_has_no_pass_hat_k() -> None:
    report = build_report([make_session("A"), make_session("B", score=0.2)])
    assert report.trials == 1 and report.pass_hat_k == []
    assert "pass^k" not in render_report(report)


def test_breakdowns_group_by_split_family_and_more_with_success_paths_apart() -> None:
    sessions = [
        make_session("S1", split="eval", difficulty="complex"),
        make_session("S2", split="holdout", score=0.4),
        make_session(
            "F1",
            split="eval",
            failure_category="INVALID_ENUM",
            failure_family="schema",
            score=0.95,
        ),
        make_session(
            "F2",
            split="seed",
            failure_category="PAST_DATE",
            failure_family="domain values",
            score=0.3,
            outcome="step_limit",
        ),
    ]
    report = build_report(sessions)
    by = {b.dimension: {g.group: g for g in b.groups} for b in report.breakdowns}
    # Groups come in the domain's order, and only those present.
    assert list(by["split"]) == ["seed", "eval", "holdout"]
    assert list(by["failure family"]) == ["success path", "schema", "domain values"]
    assert list(by["failure category"]) == ["success path", "INVALID_ENUM", "PAST_DATE"]
    assert list(by["difficulty"]) == ["simple", "complex"]
    assert list(by["outcome"]) == ["completed", "step_limit"]
    success = by["failure family"]["success path"]
    assert (success.scored, success.pass_rates["0.9"].passed) == (2, 1)
    assert by["split"]["eval"].pass_rates["0.9"].rate == pytest.approx(1.0)
    assert by["task category"]["create_opportunity"].episodes == 4


def test_harness_errors_are_listed_and_left_out_of_pass_rates() -> None:
    sessions = [
        make_session("A"),
        make_session("B"),
        make_session("C", score=0.0, outcome="harness_error", error="verifier timed out"),
        make_session("D", score=0.0, outcome="agent_error", error="retries exhausted"),
    ]
    report = build_report(sessions)
    assert report.episodes == 4 and report.scored_episodes == 3
    # The agent's own failure counts; the harness's does not.
    assert (report.pass_rates["0.9"].passed, report.pass_rates["0.9"].total) == (2, 3)
    assert [(e.case_id, e.error) for e in report.harness_errors] == [("C", "verifier timed out")]
    outcome = {g.group: g for g in report.breakdowns[-1].groups}
    assert outcome["harness_error"].scored == 0 and outcome["harness_error"].harness_errors == 1
    text = render_report(report)
    assert "1 harness error (never counted in pass rates" in text
    assert "C trial 0: verifier timed out" in text


def test_tokens_and_cost_per_episode_and_per_success() -> None:
    sessions = [
        make_session("A", student_tokens=(1000, 0), cost_usd=0.10),
        make_session("B", student_tokens=(3000, 0), cost_usd=0.30, score=0.0),
        make_session("C", outcome="harness_error", student_tokens=(9000, 0), cost_usd=9.0),
    ]
    cost = build_report(sessions).cost
    assert (cost.episodes, cost.passes) == (2, 1)
    assert cost.tokens.total == 4000 and cost.tokens.per_episode == 2000
    assert cost.tokens.per_passing_episode == 1000  # the passing episode itself
    assert cost.tokens.per_pass == 4000  # all spend divided by the one success
    assert cost.cost_usd.per_pass == pytest.approx(0.40)
    unpriced = build_report([make_session("A", cost_usd=None)]).cost
    assert unpriced.unpriced_episodes == 1 and unpriced.cost_usd.total is None


# ---------------------------------------------------------------------------- reading


def test_a_line_cut_short_by_a_killed_writer_is_skipped(tmp_path: Path) -> None:
    path = write_run(tmp_path, [make_session("A"), make_session("B")])
    with path.open("a", encoding="utf-8") as handle:
        handle.write(make_session("C").model_dump_json()[:57])
    assert [s.case_id for s in load_sessions(tmp_path)] == ["A", "B"]
    report = load_report(tmp_path)
    assert report.reading.truncated_last_line == 3
    assert "line 3 is cut short" in render_report(report)


def test_a_corrupt_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = write_run(tmp_path, [make_session("A"), make_session("B")])
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(1, '{"type":"session","session_id":')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ResultsError) as raised:
        load_sessions(tmp_path)
    assert raised.value.code == "corrupt_line"
    assert f"{path} line 2 is not valid JSON" in str(raised.value)


def test_an_invalid_record_is_an_error_naming_the_field(tmp_path: Path) -> None:
    path = write_run(tmp_path, [make_session("A")])
    bad = json.loads(make_session("B").model_dump_json()) | {"score": 7}
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(bad) + "\n")
    with pytest.raises(ResultsError, match=r"line 2 is not a valid session trace: score"):
        load_sessions(path)


def test_a_session_written_twice_keeps_its_last_copy_and_is_reported(tmp_path: Path) -> None:
    write_run(tmp_path, [make_session("A", score=0.0), make_session("B"), make_session("A")])
    sessions = load_sessions(tmp_path)
    assert sorted((s.case_id, s.score) for s in sessions) == [("A", 1.0), ("B", 1.0)]
    report = load_report(tmp_path)
    assert report.reading.duplicates == {"run-1/A/0": 2}
    assert report.pass_rates["0.9"].total == 2
    assert "1 session id(s) appear more than once" in render_report(report)


def test_run_json_sets_the_trials_and_a_broken_one_only_warns(tmp_path: Path) -> None:
    sessions = [make_session("A", trial) for trial in range(2)]
    # As the runner writes it: the trials are in the stored config.
    info = {
        "run_id": "run-1",
        "agent": "student",
        "config": {"agent": "student", "trials": 3},
        "total_items": 3,
        "corpus_hash": "ab" * 32,
        "created_at": "2025-11-12T09:00:00+00:00",
    }
    write_run(tmp_path, sessions, run_info=info)
    report = load_report(tmp_path)
    # Three planned trials, two finished: pass^3 has no case to count yet.
    assert [(e.k, e.cases) for e in report.pass_hat_k] == [(1, 1), (2, 1), (3, 0)]
    text = render_report(report)
    assert "corpus abababababababab" in text and "2 episodes (of 3 planned) of 1 cases" in text
    (tmp_path / "run.json").write_text("{not json", encoding="utf-8")
    report = load_report(tmp_path)
    assert report.run is None and any("run.json is unreadable" in w for w in report.warnings)


def test_each_run_lists_how_its_replies_were_read() -> None:
    judged = make_reward("B", 1.0, failed_check=None,
                         judges=[JudgeScore(judge="j", score=1.0, uncertainty=0.0, rationale="")])  # fmt: skip
    sessions = [
        make_session("A", run_id="run-1"),
        make_session("B", run_id="run-1"),
        make_session("C", run_id="run-1", outcome="harness_error", score=0.0),
        make_session("A", run_id="run-2", reward=make_reward("A", 1.0, failed_check=None)),
        make_session("B", run_id="run-2", reward=judged),
    ]
    report = build_report(sessions)
    # per run, scored episodes only (the harness error was not verified)
    assert report.verification_modes == {
        "run-1": {"offline": 2},
        "run-2": {"offline": 1, "judges": 1},
    }
    modes = next(b for b in report.breakdowns if b.dimension == "verification mode")
    assert [(g.group, g.episodes, g.scored) for g in modes.groups] == [
        ("offline", 3, 3),
        ("judges", 1, 1),
        ("not verified", 1, 0),
    ]
    text = render_report(report)
    assert "verification of run run-1: offline 2 (scored episodes per mode)" in text
    assert "verification of run run-2: offline 1, judges 1 (scored episodes per mode)" in text
    assert "By verification mode" in text
    assert "note: episodes were verified in more than one mode" in text
    single = render_report(build_report([make_session("A"), make_session("B")]))
    assert "verification: offline 2 (scored episodes per mode)" in single
    assert "more than one mode" not in single


def test_older_traces_read_their_verification_mode(tmp_path: Path) -> None:
    old = make_session("A").model_dump(mode="json")
    old["crm_context"]["verification_mode"] = "structured+judges"  # the name used before
    older = make_session("B").model_dump(mode="json")
    del older["crm_context"]["verification_mode"]
    reward = make_reward("C", 1.0, failed_check=None).model_dump(mode="json")
    del reward["verification_mode"]  # a record from before the field
    oldest = make_session("C").model_dump(mode="json")
    oldest["reward"], oldest["crm_context"]["verification_mode"] = reward, "structured"
    path = tmp_path / "sessions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (old, older, oldest)), encoding="utf-8")
    sessions = load_sessions(path)
    assert [s.crm_context.verification_mode for s in sessions] == ["judges", None, "offline"]
    assert sessions[2].reward is not None and sessions[2].reward.verification_mode == "offline"
    report = load_report(path)
    assert report.verification_modes == {"run-1": {"offline": 1, "judges": 1, "not verified": 1}}


# ---------------------------------------------------------------------------- the command


def test_results_command_prints_aligned_tables(tmp_path: Path, cli: typer.Typer) -> None:
    write_run(tmp_path, _three_trial_run())
    code, out, _ = invoke(cli, "results", str(tmp_path))
    assert code == 0, out
    assert "run run-1 | agent student | model gpt-4.1 | 3 trials per case" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["0.9"][:4] == ["0.9", "6", "12", "50.0%"]
    assert "pass^k" in out and "By failure family" in out and "success path" in out
    assert "verification: offline 12 (scored episodes per mode)" in out


def test_results_command_prints_json(tmp_path: Path, cli: typer.Typer) -> None:
    write_run(tmp_path, _three_trial_run())
    code, out, _ = invoke(cli, "results", str(tmp_path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["pass_rates"]["0.9"]["passed"] == 6
    assert data["pass_hat_k"][2]["values"]["0.9"] == pytest.approx(0.25)
    assert data["verification_modes"] == {"run-1": {"offline": 12}}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "no run directory or trace file at"),
        ("no_file", "no sessions.jsonl in"),
        ("empty", "holds no session yet"),
        ("corrupt", "line 1 is not valid JSON"),
    ],
)
def test_results_command_fails_clearly(
    tmp_path: Path, cli: typer.Typer, layout: str, message: str
) -> None:
    target = tmp_path / "run"
    if layout != "missing":
        target.mkdir()
    if layout == "empty":
        (target / "sessions.jsonl").write_text("", encoding="utf-8")
    if layout == "corrupt":
        good = make_session("A").model_dump_json()
        (target / "sessions.jsonl").write_text("garbage\n" + good + "\n", encoding="utf-8")
    code, out, err = invoke(cli, "results", str(target))
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in out + err
