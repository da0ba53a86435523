"""The corpus generator: deterministic, weighted, and what the committed corpus must hold."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from crmbench.cli import app
from crmbench_contracts.cases import FAILURE_CATEGORIES, Case
from crmbench_corpus.generator import (
    DEFAULT_SEED,
    HOLDOUT_TASKS,
    RARE_TASK_FLOOR,
    allocate,
    generate,
    task_counts,
)
from crmbench_corpus.store import case_line, default_corpus_dir, load_cases, load_manifest
from crmbench_corpus.success import SUCCESS_BLUEPRINTS
from tests.conftest import REPO_ROOT

TASKS_CSV = REPO_ROOT / "corpus" / "reference" / "agent_tasks.csv"


@pytest.fixture(scope="module")
def committed() -> list[Case]:
    return load_cases(default_corpus_dir())


def test_the_committed_corpus_is_exactly_what_the_generator_makes(committed: list[Case]) -> None:
    fresh = generate(DEFAULT_SEED, len(committed), TASKS_CSV)
    expected = "".join(case_line(c) + "\n" for c in fresh)
    on_disk = (default_corpus_dir() / "cases.jsonl").read_text(encoding="utf-8")
    assert expected == on_disk


def test_same_seed_same_bytes_other_seed_other_cases() -> None:
    first = [case_line(c) for c in generate(7, 200, TASKS_CSV)]
    again = [case_line(c) for c in generate(7, 200, TASKS_CSV)]
    other = [case_line(c) for c in generate(8, 200, TASKS_CSV)]
    assert first == again
    assert first != other


def test_acceptance_mix(committed: list[Case]) -> None:
    total = len(committed)
    assert total >= 1500
    success = sum(c.failure is None for c in committed)
    assert abs(success / total - 0.6) <= 0.03
    failures = Counter(c.failure.category for c in committed if c.failure)
    assert set(failures) == set(FAILURE_CATEGORIES)
    assert min(failures.values()) >= 20
    assert {c.split.value for c in committed} == {"seed", "eval", "holdout"}
    assert {c.difficulty.value for c in committed} == {"simple", "medium", "complex"}
    holdout = sum(c.split.value == "holdout" for c in committed) / total
    assert 0.10 <= holdout <= 0.15
    assert 25 <= sum(c.split.value == "seed" for c in committed) <= 35
    # holdout is chosen by task and failure family, not at random
    for case in committed:
        if case.split.value == "holdout":
            assert (case.task_category in HOLDOUT_TASKS and case.failure is None) or (
                case.failure is not None and case.failure.family.value == "strings"
            )


def test_tasks_are_weighted_by_the_agent_logs_with_a_floor(committed: list[Case]) -> None:
    counts = task_counts(TASKS_CSV)
    successes = Counter(c.task_category for c in committed if c.failure is None)
    assert set(successes) == set(SUCCESS_BLUEPRINTS)
    assert min(successes.values()) >= RARE_TASK_FLOOR
    frequent = sorted(counts, key=counts.__getitem__, reverse=True)[:3]
    rare = sorted(counts, key=counts.__getitem__)[:3]
    assert min(successes[t] for t in frequent) > max(successes[t] for t in rare)


def test_allocate_respects_floor_and_total() -> None:
    shares = allocate({"a": 90, "b": 9, "c": 1}, 100, 5)
    assert sum(shares.values()) == 100
    assert min(shares.values()) >= 5
    assert shares["a"] > shares["b"] > shares["c"] - 1
    with pytest.raises(ValueError):
        allocate({"a": 1, "b": 1}, 3, 2)


def test_every_case_is_complete(committed: list[Case]) -> None:
    ids = [c.case_id for c in committed]
    assert len(ids) == len(set(ids))
    for case in committed:
        assert case.turns and all(t.content.strip() for t in case.turns)
        checks = case.expected.state or case.expected.communicate
        assert checks, f"{case.case_id} checks nothing"
        assert case.expected.reference_reply
        if case.failure is not None:
            assert case.failure.trap.naive_actions, case.case_id
            assert case.failure.family == FAILURE_CATEGORIES[case.failure.category]


def test_stats_json_matches_the_manifest() -> None:
    result = CliRunner().invoke(app, ["cases", "stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    for key in ("total", "success_share", "by_split", "by_category", "by_failure_category",
                "by_difficulty"):  # fmt: skip
        assert key in stats
    assert stats == load_manifest()
    human = CliRunner().invoke(app, ["cases", "stats"])
    assert human.exit_code == 0 and "success paths" in human.output


def test_stats_on_a_missing_corpus_is_a_clear_error(tmp_path: object) -> None:
    result = CliRunner().invoke(app, ["cases", "stats", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "cases generate" in result.output and "Traceback" not in result.output
